"""A synchronous round under secure aggregation: four exchanges with the cohort, and the server
learns only the sum of the survivors' model deltas (``cohort.secagg``).

    advertise keys ─► share keys (routed, encrypted) ─► train, mask, send ─► reveal shares ─► Σ

Every exchange is an ordinary ``Channel.run`` with the cohort that is still there; a client that
fails, times out or answers malformed drops out at that stage, and the protocol goes on while at
least t remain. The sum, decoded from the ring, enters the model's pipeline as a precombined
Aggregate (unweighted: every survivor counts once), so central DP's noise, the global steps and the
server optimizer apply as in any round. Per-client updates are never in the clear on the server.

Nor are per-client figures: each client's metrics and whether it was clipped ride in its masked
vector (:mod:`cohort.secagg.figures`), so the record gets only their means over the survivors, and
``clients.jsonl`` only who took part (or why a client failed). Federated evaluation runs the same
four exchanges (:func:`secure_evaluation`). Every record says which protection was on
(:func:`facts`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from cohort.aggregation.pipeline import Aggregate
from cohort.core.arrays import num_parameters, unflatten
from cohort.core.errors import ConfigError
from cohort.core.types import MODEL, ClientFailure, FailureStage, Instruction, Message, Reply
from cohort.secagg import figures
from cohort.secagg.crypto import SecAggError
from cohort.secagg.protocol import SecAggServer, bits_for, dequantize_sum, harary_graph
from cohort.secagg.tasks import GROUP, b64, u8


class _Exchange:
    """One exchange of the protocol with a set of clients over ``channel`` (a ``ctx`` with ``channel``
    and ``timeout_s``); what fails or answers malformed is kept in ``failures``."""

    def __init__(self, ctx, version: int) -> None:
        self.ctx, self.version = ctx, version
        self.failures: list[ClientFailure] = []

    def __call__(self, task: str, arrays, config: dict[str, Any], who, per_client=lambda c: {}) -> dict[int, Reply]:
        instructions = [Instruction(c, {"secagg_id": c, **per_client(c)}) for c in sorted(who)]
        out: dict[int, Reply] = {}
        for pos, outcome in self.ctx.channel.run(Message(task, arrays, config, self.version), instructions, self.ctx.timeout_s):
            cid = instructions[pos].client_id
            if isinstance(outcome, ClientFailure):
                self.failures.append(outcome)
            elif isinstance(outcome, Reply) and isinstance(outcome.arrays, dict) and isinstance(outcome.arrays.get(GROUP), dict):
                out[cid] = outcome
            else:
                self.failures.append(ClientFailure(cid, FailureStage.VALIDATE, f"answered {task} without its {GROUP!r} group"))
        return out

    def refuse(self, cid: int, why: str) -> None:
        self.failures.append(ClientFailure(cid, FailureStage.VALIDATE, why))


def _bytes(reply: Reply, name: str, size: int | None = None) -> bytes:
    a = reply.arrays[GROUP].get(name)
    if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 1 and (size is None or a.size == size)):
        raise ValueError(f"{name!r} is not {'a uint8 vector' if size is None else f'{size} bytes'}")
    return a.tobytes()


def facts(settings, cohort: int) -> dict[str, Any]:
    """What every record of a secure run says about the protection: the mode, t, the range."""
    return {"secagg_mode": "secagg+" if settings.degree else "secagg", "secagg_threshold": settings.threshold_for(cohort),
            "secagg_clip_range": settings.clip_range, **({"secagg_degree": settings.degree} if settings.degree else {})}


def participation(task: str, cid: int) -> dict[str, Any]:
    """A survivor's line in ``clients.jsonl``: that it took part, nothing it computed."""
    return {"client": int(cid), "task": task, "status": "ok"}


class _Named:
    """The metric names each accepted client sent in the clear (its values are in the masked sum)."""

    def __init__(self, ex: _Exchange, task: str) -> None:
        self.ex, self.task, self.names = ex, task, {}

    def __call__(self, cid: int, reply: Reply) -> bool:
        try:
            self.names[cid] = figures.read_names(reply.arrays[GROUP].get("names"))
            return True
        except ValueError as e:
            self.ex.refuse(cid, f"{self.task}: {e}")
            return False

    def agreed(self, survivors: set[int]) -> list[str] | None:
        """The survivors' common names, or None if they differ (their slots then mean different things)."""
        found = {tuple(self.names.get(c, ())) for c in survivors}
        return list(found.pop()) if len(found) == 1 else None


def secure_round(ctx, state, cohort, rctx, fit_config: dict[str, Any], accs):
    """Run one secure round and put its sum into the round's accumulators ``accs``. Returns (accs, the
    survivors' count, the failures, the record's figures, why there is no output or None)."""
    settings = ctx.algorithm.secure
    ids = [int(c) for c in cohort]
    bits = bits_for(len(ids))
    model = state.groups[MODEL]
    length = num_parameters(model)
    ex = _Exchange(ctx, state.version)
    config = {**fit_config, "secagg": True, "secagg_clip_range": settings.clip_range, "secagg_bits": bits}
    private = ctx.algorithm.aggregators[MODEL].privacy
    if private is not None:  # central DP: the clients clip, since the server never sees an update
        config["secagg_l2_clip"] = float(state.steps[MODEL].privacy.clip)
    record = facts(settings, len(ids))
    named = _Named(ex, "fit")
    try:
        total, survivors = secure_sum(ex, ids, settings, state.seed, rctx.round, "fit", state.groups, config,
                                      length + figures.FIT_LENGTH, named)
    except SecAggError as e:
        return accs, 0, ex.failures, record, f"secure aggregation: {e}"
    n = len(survivors)
    getattr(ctx, "rows", []).extend(participation("fit", c) for c in sorted(survivors))
    summed = dequantize_sum(total[:length], n, settings.clip_range, bits)
    l2_clipped, range_clipped = (int(v) for v in total[length:length + figures.FLAGS])
    record["secagg_range_clipped"] = range_clipped
    names = named.agreed(survivors)
    if names is None:
        record["secagg_metrics_error"] = "the survivors reported different metric names: their means are left out"
    else:
        means = figures.decode(total[length + figures.FLAGS:], names)
        record.update({k if k.startswith("train_") else f"train_{k}": v for k, v in means.items()})
    like = {k: np.zeros(a.shape, np.float64) for k, a in model.items()}
    aggregate = Aggregate(unflatten(summed, like), float(n), n)
    out = {}
    for g, acc in accs.items():
        acc = ctx.algorithm.aggregators[g].precombined(acc, aggregate)
        tally = acc.state.privacy
        if tally is not None and hasattr(tally, "clipped"):  # central DP: how many clipped, from the masked flags
            acc = acc._replace(state=acc.state._replace(privacy=tally._replace(clients=n, clipped=l2_clipped)))
        out[g] = acc
    return out, n, ex.failures, record, None


def secure_evaluation(channel, timeout_s, settings, state, clients, config: dict[str, Any]
                      ) -> tuple[dict[str, Any], list[ClientFailure], list[dict]]:
    """Federated evaluation of ``clients`` in four exchanges: (the means of their held-out loss and
    metrics, each client once, named ``federated_*``; the failures; their rows for clients.jsonl)."""
    ids = [int(c) for c in clients]
    ex = _Exchange(SimpleNamespace(channel=channel, timeout_s=timeout_s), state.version)
    named = _Named(ex, "evaluate")
    try:
        settings.check(len(ids))
        total, survivors = secure_sum(ex, ids, settings, state.seed, state.round, "secagg_evaluate", state.groups,
                                      config, figures.LENGTH, named)
    except (SecAggError, ConfigError) as e:
        return {"federated_error": f"secure aggregation: {e}"}, ex.failures, []
    rows = [participation("evaluate", c) for c in sorted(survivors)]
    names = named.agreed(survivors)
    if names is None:
        return {"federated_error": "the survivors reported different metric names"}, ex.failures, rows
    return {f"federated_{k}": v for k, v in figures.decode(total, names).items()}, ex.failures, rows


def secure_sum(ex: _Exchange, ids: list[int], settings, seed: int, round_: int, task: str, arrays, config: dict[str, Any],
               length: int, accepted=lambda cid, reply: True) -> tuple[np.ndarray, set[int]]:
    """The protocol's four exchanges with clients ``ids``; ``task`` (with ``config["secagg"]``) is the one
    whose answer each client masks: a uint32 vector of ``length``. Returns (Σ of the survivors' vectors
    mod 2^32, the survivors); raises SecAggError when fewer than t remain. ``accepted(cid, reply)`` sees each
    masked reply of the right shape, and may refuse it (False)."""
    t = settings.threshold_for(len(ids))
    graph = harary_graph(ids, settings.degree, seed, round_) if settings.degree else None
    server = SecAggServer(t, length, graph)
    base = {"round": round_, "seed": seed, "version": ex.version}
    got = ex("secagg_advertise", {}, base, ids, lambda c: {"secagg_threshold": t,
                                                           "secagg_neighbours": sorted(graph[c]) if graph else None})
    keys = {}
    for c, r in got.items():
        try:
            keys[c] = (_bytes(r, "c_pk", 32), _bytes(r, "s_pk", 32))
        except ValueError as e:
            ex.refuse(c, f"malformed keys: {e}")
    keys = server.collect_keys(keys)
    shared = {GROUP: {**{f"c{v}": u8(k[0]) for v, k in keys.items()}, **{f"s{v}": u8(k[1]) for v, k in keys.items()}}}
    got = ex("secagg_share", shared, base, keys)
    sent = {}
    for c, r in got.items():
        try:
            sent[c] = {int(k[2:]): _bytes(r, k) for k in r.arrays[GROUP] if k.startswith("to") and k[2:].isdigit()}
        except ValueError as e:
            ex.refuse(c, f"malformed shares: {e}")
    inbox = server.route(sent)
    got = ex(task, arrays, {**config, "secagg": True}, inbox,
             lambda c: {"secagg_inbox": {str(u): b64(ct) for u, ct in inbox[c].items()}})
    ys = {}
    for c, r in got.items():
        y = r.arrays[GROUP].get("y")
        if isinstance(y, np.ndarray) and y.dtype == np.uint32 and y.shape == (length,):
            if accepted(c, r):
                ys[c] = y
        else:
            ex.refuse(c, f"its masked input is not a uint32 vector of length {length}")
    survivors, dropped = server.collect_masked(ys)
    got = ex("secagg_unmask", {}, {**base, "secagg_survivors": sorted(survivors), "secagg_dropped": sorted(dropped)},
             survivors)
    reveals = {}
    for c, r in got.items():
        try:
            reveals[c] = {int(k[1:]): (k[0], _bytes(r, k)) for k in r.arrays[GROUP] if k[:1] in ("b", "s") and k[1:].isdigit()}
        except ValueError as e:
            ex.refuse(c, f"malformed shares: {e}")
    return server.unmask(reveals), survivors
