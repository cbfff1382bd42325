"""Secure aggregation on the client: the protocol's exchanges as tasks of any algorithm's client half.

A secure round is four exchanges on the open task set, each an ordinary Message and Reply, so it
runs through every channel (in-process, the process pool, gRPC) unchanged:

1. ``secagg_advertise``: the client makes its two key pairs and sends the public halves;
2. ``secagg_share``: it receives everyone's public keys and sends its encrypted shares;
3. ``fit`` with ``config["secagg"]``: it receives its inbox of shares, trains as the algorithm says,
   clips each coordinate of its model delta to ``[−clip_range, clip_range]`` (and, under central DP,
   the whole delta to L2 norm ``l2_clip``), quantizes it, appends its figures (whether it clipped,
   its metrics: :mod:`cohort.secagg.figures`), masks it, and sends only the masked vector and the
   names of its metrics: no example count (the reply says 1), no metric value, no time;
4. ``secagg_unmask``: it reveals the shares the server may have, and forgets the round.

``secagg_evaluate`` is the third exchange of a federated evaluation under secure aggregation: the
client evaluates the model on its held-out data and masks only the figures (its loss and metrics).

Between exchanges the protocol's secrets live in the client's own state (group ``secagg``), so a
process-pool worker or a client process can pick up where the last exchange left off; the state is
emptied at the end of the round. Arrays carry the protocol's bytes as uint8.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from cohort.core.arrays import clip_to, flatten
from cohort.core.errors import ConfigError
from cohort.core.seeding import Stage, rng
from cohort.core.types import MODEL, EvaluateResult, Message, Reply
from cohort.secagg import figures
from cohort.secagg.protocol import SecAggClient, quantize, to_limbs, u8

GROUP = "secagg"
TASKS = ("secagg_advertise", "secagg_share", "secagg_evaluate", "secagg_unmask")


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def is_secure(message: Message) -> bool:
    return message.task in TASKS or bool(message.config.get("secagg"))


def handle(half, message: Message, trainer, state, account=lambda reply, state: (reply, state)) -> tuple[Reply, Any]:
    """Run one exchange of a secure round for ``half`` (the algorithm's client half). ``account``: the
    client's privacy accounting (``cohort.client.accounting.account``), run on its reply before masking."""
    cfg = message.config
    own = dict(state or {})
    held = own.pop(GROUP, None)
    cid = int(cfg["secagg_id"])
    if message.task == "secagg_advertise":
        neighbours = cfg.get("secagg_neighbours")
        client = SecAggClient(cid, int(cfg["secagg_threshold"]), frozenset(neighbours) if neighbours is not None else None)
        c_pk, s_pk = client.advertise()
        return Reply({GROUP: {"c_pk": u8(c_pk), "s_pk": u8(s_pk)}}, 1), {**own, GROUP: client.to_state()}
    if held is None:
        raise ConfigError(f"task {message.task!r} of a secure round came before this client's keys (secagg_advertise)")
    client = SecAggClient.from_state(held)
    if message.task == "secagg_share":
        arrays = message.arrays[GROUP]
        ids = sorted({int(k[1:]) for k in arrays})
        keys = {v: (arrays[f"c{v}"].tobytes(), arrays[f"s{v}"].tobytes()) for v in ids}
        sent = client.share_keys(keys)
        return Reply({GROUP: {f"to{v}": u8(ct) for v, ct in sent.items()}}, 1), {**own, GROUP: client.to_state()}
    if message.task == "fit":
        inbox = {int(v): base64.b64decode(ct) for v, ct in cfg.get("secagg_inbox", {}).items()}
        plain = Message("fit", message.arrays, {k: v for k, v in cfg.items() if not k.startswith("secagg")}, message.version)
        reply, own_after = half.fit(plain, trainer, own or None)
        reply, own_after = account(reply, own_after)  # before masking: the raw facts must not travel
        delta = reply.arrays[MODEL]
        l2, l2_clipped = cfg.get("secagg_l2_clip"), False
        if l2:
            delta, l2_clipped = clip_to(delta, float(l2))
        flat, clip_range = flatten(delta), float(cfg["secagg_clip_range"])
        g = rng(int(cfg.get("seed", 0)), int(cfg.get("round", 0)), Stage.SECAGG_ROUND, cid)
        x = quantize(flat, clip_range, int(cfg["secagg_bits"]), g)
        names, slots = figures.encode(reply.metrics)
        flags = np.array([bool(l2_clipped), bool((np.abs(flat) > clip_range).any())], np.uint32)
        y = client.masked_input(np.concatenate([x, flags, slots]), inbox)
        state_after = {**(own_after or {}), GROUP: client.to_state()}
        return Reply({GROUP: {"y": y, "names": figures.names_array(names)}}, 1), state_after
    if message.task == "secagg_evaluate":
        inbox = {int(v): base64.b64decode(ct) for v, ct in cfg.get("secagg_inbox", {}).items()}
        plain = Message("evaluate", message.arrays, {k: v for k, v in cfg.items() if not k.startswith("secagg")},
                        message.version)
        result, _ = half.evaluate(plain, trainer, own or None)
        if not isinstance(result, EvaluateResult):
            raise ConfigError(f"evaluate returned a {type(result).__name__}; expected an EvaluateResult")
        metrics = result.metrics if isinstance(result.metrics, Mapping) else {}
        names, slots = figures.encode({**metrics, "loss": result.loss})
        y = client.masked_input(slots, inbox)
        return Reply({GROUP: {"y": y, "names": figures.names_array(names)}}, 1), {**own, GROUP: client.to_state()}
    if message.task.startswith("data_"):  # a site's statistics, summed exactly (cohort.data.exchange)
        answer = getattr(trainer, "answer", None)
        if answer is None:
            raise ConfigError(f"task {message.task!r} asks for this site's data statistics; this client holds no site data")
        inbox = {int(v): base64.b64decode(ct) for v, ct in cfg.get("secagg_inbox", {}).items()}
        plain = Message(message.task, message.arrays, {k: v for k, v in cfg.items() if not k.startswith("secagg")},
                        message.version)
        reply = answer(plain, secure=True)
        y = client.masked_input(to_limbs(reply.arrays["site"]["sum"]), inbox)
        return Reply({GROUP: {"y": y}}, 1), {**own, GROUP: client.to_state()}  # its row count is in the sum only
    if message.task == "secagg_unmask":
        revealed = client.unmask(set(cfg["secagg_survivors"]), set(cfg["secagg_dropped"]))
        out = {f"{kind}{v}": u8(share) for v, (kind, share) in revealed.items()}
        return Reply({GROUP: out}, 1), (own or None)  # the round's secrets are forgotten
    raise ConfigError(f"task {message.task!r} is not part of a secure round")
