"""FedBuff over a live channel (gRPC): tasks go out one by one and their results are folded in the
order they really arrive, not by a virtual clock.

The policy keeps ``concurrency`` (M) clients busy, each drawn (seeded) from the connected clients
not already busy, on the model version current when it starts. Every ``buffer_size`` (K) arrivals
make one server step; each update is scaled by its staleness as in simulation. A failed or silent
client counts as an arrival that brings nothing, and its slot is given to another client.

What is in flight lives in this process only: a server that is killed loses it (the clients' late
results are discarded), and a resumed one dispatches afresh. The checkpointed ``FedBuffState`` then
holds the dispatch count and no work in flight.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from cohort.core.seeding import Stage, rng
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, RoundContext
from cohort.server.records import train_metrics
from cohort.server.state import ServerState
from cohort.server.step import FedBuffState, InFlight, StepContext, StepOutcome, finish_step, fold_replies


def live_step(policy, state: ServerState, ctx: StepContext) -> StepOutcome:
    """One buffered server step of ``policy`` (FedBuff, or FedAsync), whose ``step`` calls this on a
    live channel; the work in flight (task id -> InFlight) is ``ctx.in_flight``."""
    channel, work_out = ctx.channel, ctx.in_flight
    r = state.round + 1
    st: FedBuffState = state.policy or FedBuffState(0, (), {})
    dispatched = st.dispatched
    started = time.monotonic()

    started_on = ctx.snapshots  # the groups each version in flight was sent (FedAsync mixes with them)

    def dispatch(version: int, groups) -> bool:
        nonlocal dispatched
        started_on[version] = groups
        busy = {w.client_id for w in work_out.values()}
        free = [c for c in channel.available() if c not in busy]
        if not free:
            return False
        cid = int(free[rng(state.seed, dispatched, Stage.ASYNC_SAMPLE).integers(len(free))])
        config = {**ctx.algorithm.config, **ctx.records("fit", dispatched + 1), "seed": state.seed, "version": version,
                  "round": dispatched + 1}
        task_id = channel.submit(Message("fit", groups, config, version), Instruction(cid, {}))
        dispatched += 1
        if task_id is not None:
            work_out[task_id] = InFlight(0.0, dispatched - 1, cid, version)
        return task_id is not None

    while len(work_out) < policy.concurrency and dispatch(state.version, state.groups):
        pass
    rctx = RoundContext(r, state.seed, policy.buffer_size, ctx.num_clients, state.version)
    accs = ctx.algorithm.start(state.groups, state.steps, rctx)
    failures: list[ClientFailure] = []
    fit_metrics, staleness = ctx.mean("fit"), []
    count = arrivals = 0
    deadline = None if ctx.timeout_s is None else started + ctx.timeout_s
    while arrivals < policy.buffer_size and work_out:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        got = channel.collect(remaining)
        if got is None:  # the step's deadline: what is still out fails and is not waited for
            for work in work_out.values():
                failures.append(ClientFailure(work.client_id, FailureStage.TIMEOUT,
                                              f"no result within the {ctx.timeout_s}s deadline"))
            channel.drop(list(work_out))
            work_out.clear()
            break
        task_id, outcome = got
        work = work_out.pop(task_id, None)
        if work is None:
            continue  # dropped earlier: discarded
        arrivals += 1
        if isinstance(outcome, ClientFailure):
            work = work._replace(failure=outcome)
        else:
            work = work._replace(reply=outcome)
        outcome = policy._stale(work, rctx, started_on.get(work.version), state.groups)
        accs, n = fold_replies(ctx, accs, [(work.client_id, outcome)], failures, fit_metrics)
        if n:
            staleness.append(state.version - work.version)
        count += n
        if arrivals < policy.buffer_size:
            dispatch(state.version, state.groups)
    new, stands, problem = finish_step(ctx, state, accs, count)
    while len(work_out) < policy.concurrency and dispatch(new.version, new.groups):
        pass
    for v in [v for v in started_on if v not in {w.version for w in work_out.values()}]:
        del started_on[v]  # no work in flight was started on it any more
    record: dict[str, Any] = {
        **train_metrics(fit_metrics), "round": r, "status": "ok" if stands else "skipped",
        "clients_sampled": arrivals, "clients_succeeded": count, "clients_failed": len(failures),
        "staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
        "staleness_max": int(max(staleness)) if staleness else 0,
        "clients_in_flight": len(work_out),
    }
    if problem:
        record["aggregate_error"] = problem
    clock = state.clock + (time.monotonic() - started)  # real seconds: there is no virtual clock here
    new = replace(new, round=r, clock=clock, policy=FedBuffState(dispatched, (), {}))
    return StepOutcome(new, stands, record, failures)
