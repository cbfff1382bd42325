"""A synchronous round under secure aggregation: four exchanges with the cohort, and the server
learns only the sum of the survivors' model deltas (``cohort.secagg``).

    advertise keys ─► share keys (routed, encrypted) ─► train, mask, send ─► reveal shares ─► Σ

Every exchange is an ordinary ``Channel.run`` with the cohort that is still there; a client that
fails, times out or answers malformed drops out at that stage, and the protocol goes on while at
least t remain. The sum, decoded from the ring, enters the model's pipeline as a precombined
Aggregate (unweighted: every survivor counts once), so central DP's noise, the global steps and the
server optimizer apply as in any round. Per-client updates are never in the clear on the server.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cohort.aggregation.pipeline import Aggregate
from cohort.core.arrays import num_parameters, unflatten
from cohort.core.types import MODEL, ClientFailure, FailureStage, Instruction, Message, Reply
from cohort.secagg.crypto import SecAggError
from cohort.secagg.protocol import SecAggServer, bits_for, dequantize_sum, harary_graph
from cohort.secagg.tasks import GROUP, b64, u8
from cohort.server.records import WeightedMean, client_row


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


def secure_round(ctx, state, cohort, rctx, fit_config: dict[str, Any]):
    """Run one secure round. Returns (the Aggregate of the survivors' deltas or None, the failures,
    the fit metrics, why there is no output or None)."""
    settings = ctx.algorithm.secure
    ids = [int(c) for c in cohort]
    bits = bits_for(len(ids))
    model = state.groups[MODEL]
    length = num_parameters(model)
    ex = _Exchange(ctx, state.version)
    fit_metrics = WeightedMean()
    config = {**fit_config, "secagg": True, "secagg_clip_range": settings.clip_range, "secagg_bits": bits}
    private = ctx.algorithm.aggregators[MODEL].privacy
    if private is not None:  # central DP: the clients clip, since the server never sees an update
        config["secagg_l2_clip"] = float(state.steps[MODEL].privacy.clip)

    def accepted(cid: int, reply: Reply) -> None:  # its examples, metrics and seconds; the masked vector stays here
        fit_metrics.add(reply.metrics, reply.num_examples)
        rows = getattr(ctx, "rows", None)
        if rows is not None:
            rows.append(client_row("fit", cid, reply))

    try:
        total, survivors = secure_sum(ex, ids, settings, state.seed, rctx.round, "fit", state.groups, config, length, accepted)
    except SecAggError as e:
        return None, ex.failures, fit_metrics, f"secure aggregation: {e}"
    n = len(survivors)
    summed = dequantize_sum(total, n, settings.clip_range, bits)
    like = {k: np.zeros(a.shape, np.float64) for k, a in model.items()}
    return Aggregate(unflatten(summed, like), float(n), n), ex.failures, fit_metrics, None


def secure_sum(ex: _Exchange, ids: list[int], settings, seed: int, round_: int, task: str, arrays, config: dict[str, Any],
               length: int, accepted=lambda cid, reply: None) -> tuple[np.ndarray, set[int]]:
    """The protocol's four exchanges with clients ``ids``; ``task`` (with ``config["secagg"]``) is the one
    whose answer each client masks: a uint32 vector of ``length``. Returns (Σ of the survivors' vectors
    mod 2^32, the survivors); raises SecAggError when fewer than t remain. ``accepted(cid, reply)`` sees each
    masked reply that was taken."""
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
            ys[c] = y
            accepted(c, r)
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
