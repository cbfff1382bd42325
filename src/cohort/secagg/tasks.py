"""Secure aggregation on the client: the protocol's exchanges as tasks of any algorithm's client half.

A secure round is four exchanges on the open task set, each an ordinary Message and Reply, so it
runs through every channel (in-process, the process pool, gRPC) unchanged:

1. ``secagg_advertise``: the client makes its two key pairs and sends the public halves;
2. ``secagg_share``: it receives everyone's public keys and sends its encrypted shares;
3. ``secagg:fit`` (the protocol "secagg" around the algorithm's fit, :mod:`cohort.core.tasks`): it
   receives its inbox of shares, trains as the algorithm says,
   clips each coordinate of its model delta to ``[−clip_range, clip_range]`` (and, under central DP,
   the whole delta to L2 norm ``l2_clip``), quantizes it, appends its figures (whether it clipped,
   its metrics: :mod:`cohort.secagg.figures`), masks it, and sends only the masked vector and the
   names of its metrics: no example count (the reply says 1), no metric value, no time;
4. ``secagg_unmask``: it reveals the shares the server may have, and forgets the round.

``secagg:evaluate`` is the third exchange of a federated evaluation under secure aggregation: the
client evaluates the model on its held-out data and masks only the figures (its loss and metrics);
``secagg:data_statistics`` and its kin mask a site's statistics (:mod:`cohort.data.exchange_secure`).

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
from cohort.core.records import SECAGG, record, without
from cohort.core.seeding import Stage, rng
from cohort.core.types import MODEL, EvaluateResult, Message, Reply
from cohort.core.tasks import register_protocol, register_task
from cohort.secagg import figures
from cohort.secagg.protocol import SecAggClient, quantize, to_limbs, u8

GROUP = "secagg"


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _client(message: Message, state):
    """This client's protocol state (the group it keeps between exchanges), the rest of its state, its id."""
    own = dict(state or {})
    held = own.pop(GROUP, None)
    if held is None:
        raise ConfigError(f"task {message.task!r} of a secure round came before this client's keys (secagg_advertise)")
    return SecAggClient.from_state(held), own, int(record(message.config, SECAGG)["id"])


@register_task("secagg_advertise")
def advertise(half, message: Message, trainer, state, account, under=None):
    """1. The client makes its two key pairs and sends the public halves."""
    cfg = record(message.config, SECAGG)
    own = {k: v for k, v in dict(state or {}).items() if k != GROUP}
    neighbours = cfg.get("neighbours")
    client = SecAggClient(int(cfg["id"]), int(cfg["threshold"]),
                          frozenset(neighbours) if neighbours is not None else None)
    c_pk, s_pk = client.advertise()
    return Reply({GROUP: {"c_pk": u8(c_pk), "s_pk": u8(s_pk)}}, 1), {**own, GROUP: client.to_state()}


@register_task("secagg_share")
def share(half, message: Message, trainer, state, account, under=None):
    """2. It receives everyone's public keys and sends its encrypted shares."""
    client, own, _ = _client(message, state)
    arrays = message.arrays[GROUP]
    ids = sorted({int(k[1:]) for k in arrays})
    keys = {v: (arrays[f"c{v}"].tobytes(), arrays[f"s{v}"].tobytes()) for v in ids}
    sent = client.share_keys(keys)
    return Reply({GROUP: {f"to{v}": u8(ct) for v, ct in sent.items()}}, 1), {**own, GROUP: client.to_state()}


@register_task("secagg_unmask")
def unmask(half, message: Message, trainer, state, account, under=None):
    """4. It reveals the shares the server may have, and forgets the round."""
    client, own, _ = _client(message, state)
    cfg = record(message.config, SECAGG)
    revealed = client.unmask(set(cfg["survivors"]), set(cfg["dropped"]))
    out = {f"{kind}{v}": u8(share) for v, (kind, share) in revealed.items()}
    return Reply({GROUP: out}, 1), (own or None)  # the round's secrets are forgotten


@register_protocol("secagg")
def masked(inner, half, message: Message, trainer, state, account):
    """3. ``secagg:TASK``: the client runs TASK as it would alone and sends only its answer masked: a
    fit's model delta (after the client's privacy accounting, clipped as the round asks) with its
    flags and metrics, an evaluation's loss and metrics, a site's statistics."""
    client, own, cid = _client(message, state)
    cfg, loop = record(message.config, SECAGG), message.config
    inbox = {int(v): base64.b64decode(ct) for v, ct in cfg.get("inbox", {}).items()}
    plain = Message(message.task, message.arrays, without(loop, SECAGG), message.version)
    if message.task == "fit":
        reply, own_after = inner(plain, own or None)
        if not isinstance(reply, Reply) or not isinstance(reply.arrays, Mapping) or MODEL not in reply.arrays:
            raise ConfigError(f"fit returned a {type(reply).__name__} without the model group; expected a Reply")
        reply, own_after = account(reply, own_after)  # before masking: the raw facts must not travel
        delta = reply.arrays[MODEL]
        l2, l2_clipped = cfg.get("l2_clip"), False
        if l2:
            delta, l2_clipped = clip_to(delta, float(l2))
        flat, clip_range = flatten(delta), float(cfg["clip_range"])
        g = rng(int(loop.get("seed", 0)), int(loop.get("round", 0)), Stage.SECAGG_ROUND, cid)
        x = quantize(flat, clip_range, int(cfg["bits"]), g)
        names, slots = figures.encode(reply.metrics)
        flags = np.array([bool(l2_clipped), bool((np.abs(flat) > clip_range).any())], np.uint32)
        y = client.masked_input(np.concatenate([x, flags, slots]), inbox)
        return Reply({GROUP: {"y": y, "names": figures.names_array(names)}}, 1), {**(own_after or {}), GROUP: client.to_state()}
    if message.task == "evaluate":
        result, _ = inner(plain, own or None)
        if not isinstance(result, EvaluateResult):
            raise ConfigError(f"evaluate returned a {type(result).__name__}; expected an EvaluateResult")
        metrics = result.metrics if isinstance(result.metrics, Mapping) else {}
        names, slots = figures.encode({**metrics, "loss": result.loss})
        y = client.masked_input(slots, inbox)
        return Reply({GROUP: {"y": y, "names": figures.names_array(names)}}, 1), {**own, GROUP: client.to_state()}
    reply, _ = inner(plain, own or None)  # a site's statistics, summed exactly (cohort.data.exchange)
    site = reply.arrays.get("site") if isinstance(reply, Reply) and isinstance(reply.arrays, Mapping) else None
    if not isinstance(site, Mapping) or "sum" not in site:
        raise ConfigError(f"task {message.task!r} cannot run under secure aggregation: its answer has no sum to mask")
    y = client.masked_input(to_limbs(site["sum"]), inbox)
    return Reply({GROUP: {"y": y}}, 1), {**own, GROUP: client.to_state()}  # its row count is in the sum only
