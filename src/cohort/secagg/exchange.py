"""The server's side of the protocol over any Channel: the four exchanges, and the sum they give.

An :class:`Exchange` is one task run with a set of clients (an ordinary ``Channel.run``); a client
that fails, times out or answers without the protocol's group drops out at that exchange.
:func:`secure_sum` runs the four (advertise keys, share keys, the masked task, unmask) and returns the
survivors' sum. A secure round's ``fit`` and federated evaluation (``cohort.secagg.rounds``) and the
sites' secure statistics (``cohort.data.exchange_secure``) are its uses; the client's side is
``tasks.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, Reply
from cohort.core.records import SECAGG
from cohort.secagg.protocol import SecAggServer, harary_graph
from cohort.secagg.tasks import GROUP, b64, u8


class Exchange:
    """One exchange of the protocol with a set of clients over ``channel`` (a ``ctx`` with ``channel``
    and ``timeout_s``); what fails or answers malformed is kept in ``failures``."""

    def __init__(self, ctx, version: int) -> None:
        self.ctx, self.version = ctx, version
        self.failures: list[ClientFailure] = []

    def __call__(self, task: str, arrays, config: dict[str, Any], who, per_client=lambda c: {}) -> dict[int, Reply]:
        instructions = [Instruction(c, {SECAGG: {"id": c, **per_client(c)}}) for c in sorted(who)]
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


def secure_sum(ex: Exchange, ids: list[int], settings, seed: int, round_: int, task: str, arrays, config: dict[str, Any],
               length: int, accepted=lambda cid, reply: True) -> tuple[np.ndarray, set[int]]:
    """The protocol's four exchanges with clients ``ids``; ``task`` (sent as ``secagg:TASK``) is the one
    whose answer each client masks: a uint32 vector of ``length``. Returns (Σ of the survivors' vectors
    mod 2^32, the survivors); raises SecAggError when fewer than t remain. ``accepted(cid, reply)`` sees each
    masked reply of the right shape, and may refuse it (False)."""
    t = settings.threshold_for(len(ids))
    graph = harary_graph(ids, settings.degree, seed, round_) if settings.degree else None
    server = SecAggServer(t, length, graph)
    base = {"round": round_, "seed": seed, "version": ex.version}
    got = ex("secagg_advertise", {}, base, ids, lambda c: {"threshold": t, "neighbours": sorted(graph[c]) if graph else None})
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
    got = ex(f"secagg:{task}", arrays, config, inbox,
             lambda c: {"inbox": {str(u): b64(ct) for u, ct in inbox[c].items()}})
    ys = {}
    for c, r in got.items():
        y = r.arrays[GROUP].get("y")
        if isinstance(y, np.ndarray) and y.dtype == np.uint32 and y.shape == (length,):
            if accepted(c, r):
                ys[c] = y
        else:
            ex.refuse(c, f"its masked input is not a uint32 vector of length {length}")
    survivors, dropped = server.collect_masked(ys)
    got = ex("secagg_unmask", {}, {**base, SECAGG: {"survivors": sorted(survivors), "dropped": sorted(dropped)}}, survivors)
    reveals = {}
    for c, r in got.items():
        try:
            reveals[c] = {int(k[1:]): (k[0], _bytes(r, k)) for k in r.arrays[GROUP] if k[:1] in ("b", "s") and k[1:].isdigit()}
        except ValueError as e:
            ex.refuse(c, f"malformed shares: {e}")
    return server.unmask(reveals), survivors
