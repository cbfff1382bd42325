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
from cohort.server.records import WeightedMean


class _Exchange:
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
    m = len(ids)
    t, bits = settings.threshold_for(m), bits_for(m)
    model = state.groups[MODEL]
    length = num_parameters(model)
    graph = harary_graph(ids, settings.degree, state.seed, rctx.round) if settings.degree else None
    server = SecAggServer(t, length, graph)
    base = {"round": rctx.round, "seed": state.seed, "version": state.version}
    ex = _Exchange(ctx, state.version)
    fit_metrics = WeightedMean()
    try:
        got = ex("secagg_advertise", {}, base, ids, lambda c: {"secagg_threshold": t,
                                                               "secagg_neighbours": sorted(graph[c]) if graph else None})
        keys = {}
        for c, r in got.items():
            try:
                keys[c] = (_bytes(r, "c_pk", 32), _bytes(r, "s_pk", 32))
            except ValueError as e:
                ex.refuse(c, f"malformed keys: {e}")
        keys = server.collect_keys(keys)
        arrays = {GROUP: {**{f"c{v}": u8(k[0]) for v, k in keys.items()}, **{f"s{v}": u8(k[1]) for v, k in keys.items()}}}
        got = ex("secagg_share", arrays, base, keys)
        sent = {}
        for c, r in got.items():
            try:
                sent[c] = {int(k[2:]): _bytes(r, k) for k in r.arrays[GROUP] if k.startswith("to") and k[2:].isdigit()}
            except ValueError as e:
                ex.refuse(c, f"malformed shares: {e}")
        inbox = server.route(sent)
        config = {**fit_config, "secagg": True, "secagg_clip_range": settings.clip_range, "secagg_bits": bits}
        private = ctx.algorithm.aggregators[MODEL].privacy
        if private is not None:  # central DP: the clients clip, since the server never sees an update
            config["secagg_l2_clip"] = float(state.steps[MODEL].privacy.clip)
        got = ex("fit", state.groups, config, inbox, lambda c: {"secagg_inbox": {str(u): b64(ct) for u, ct in inbox[c].items()}})
        ys = {}
        for c, r in got.items():
            y = r.arrays[GROUP].get("y")
            if isinstance(y, np.ndarray) and y.dtype == np.uint32 and y.shape == (length,):
                ys[c] = y
                fit_metrics.add(r.metrics, r.num_examples)
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
        total = server.unmask(reveals)
    except SecAggError as e:
        return None, ex.failures, fit_metrics, f"secure aggregation: {e}"
    n = len(survivors)
    summed = dequantize_sum(total, n, settings.clip_range, bits)
    like = {k: np.zeros(a.shape, np.float64) for k, a in model.items()}
    return Aggregate(unflatten(summed, like), float(n), n), ex.failures, fit_metrics, None
