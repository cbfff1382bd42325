"""Round policies: how one round (or server step) gathers replies and changes the global groups.

- :class:`Synchronous`: sample a cohort, send it the global groups, fold the replies in cohort order,
  apply one server step (FedAvg and friends).
- :class:`FedBuff` (Nguyen et al. 2022): ``concurrency`` clients train at once, each on the model
  version current when it started; every ``buffer_size`` arrivals make one server step, each
  update scaled by ``1/√(1+s)`` for its staleness ``s``. In simulation the order of arrival comes
  from a seeded virtual clock (each client has a compute speed), so a run is the same in any backend.

A policy's state lives in ``ServerState.policy``; everything it needs is there, so a resume goes on
exactly where the checkpoint left off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cohort.aggregation.weighting import staleness_function, staleness_weight
from cohort.channel.base import is_live
from cohort.core.errors import ConfigError, check
from cohort.core.seeding import Stage, rng
from cohort.core.types import ClientFailure, ClientUpdate, Groups, Instruction, Message, Reply, RoundContext
from cohort.server.live import live_step
from cohort.server.records import train_metrics
from cohort.server.sampling import check_sampling, cohort_size, sample_cohort
from cohort.server.state import ServerState
from cohort.server.step import (ClientSpeeds, FedBuffState, InFlight, StepContext, StepOutcome, finish_step,
                                fold_replies)


class Synchronous:
    """One synchronous exchange per round with a sampled cohort.

    ``over_selection`` (Bonawitz et al. 2019): sample ``⌈m·(1 + over_selection)⌉`` clients for a round
    that needs ``m`` and close it once ``m`` updates were accepted; the rest are not waited for. Over
    gRPC the first to arrive count (their results are folded in arrival order); in simulation arrival
    follows the virtual clock, and clients are run in that order only as far as needed, so a run is
    the same in every backend.
    """

    name = "sync"

    def __init__(self, fraction: float = 1.0, min_clients: int = 1, over_selection: float = 0.0) -> None:
        check_sampling(fraction, min_clients, over_selection)
        self.fraction, self.min_clients = float(fraction), min_clients
        self.over_selection = float(over_selection)

    def clients_per_step(self, num_clients: int) -> int:
        return cohort_size(num_clients, self.fraction, self.min_clients)

    def check_state(self, policy_state: Any, num_clients: int) -> None:
        if policy_state is not None:
            raise ConfigError(f"the state holds a {type(policy_state).__name__} of another round policy; a synchronous "
                              "run cannot continue it (resume it with the policy it was started with)")

    def _sample(self, ctx: StepContext, seed: int, r: int) -> np.ndarray:
        """The round's cohort: from every client in simulation; in deployment from the clients
        connected now (the channel's ``available()``), the same draw when all are connected."""
        if not is_live(ctx.channel):
            return sample_cohort(ctx.num_clients, self._over(self.clients_per_step(ctx.num_clients), ctx.num_clients), seed, r)
        population = np.asarray(sorted(ctx.channel.available()), dtype=np.int64)
        if len(population) == 0:
            return population
        size = cohort_size(len(population), self.fraction, min(self.min_clients, len(population)))
        return population[sample_cohort(len(population), self._over(size, len(population)), seed, r)]

    def _over(self, needed: int, population: int) -> int:
        return min(population, math.ceil(needed * (1 + self.over_selection) - 1e-9))

    def needed(self, ctx: StepContext) -> int:
        """Accepted updates that close a round (over-selection); the whole cohort without it."""
        population = len(ctx.channel.available()) if is_live(ctx.channel) else ctx.num_clients
        if population == 0:
            return 0
        return cohort_size(population, self.fraction, min(self.min_clients, population))

    def step(self, state: ServerState, ctx: StepContext) -> StepOutcome:
        r, seed = state.round + 1, state.seed
        cohort = self._sample(ctx, seed, r)
        config = {**ctx.algorithm.config, **ctx.records("fit", r), "round": r, "seed": seed, "version": state.version}
        message = Message("fit", state.groups, config, state.version)
        population = len(ctx.channel.available()) if is_live(ctx.channel) else ctx.num_clients
        rctx = RoundContext(r, seed, len(cohort), ctx.num_clients, state.version, population=max(population, len(cohort)))
        accs = ctx.algorithm.start(state.groups, state.steps, rctx)
        failures: list[ClientFailure] = []
        fit_metrics = ctx.mean("fit")
        durations = {int(c): ctx.speeds.duration(int(c)) for c in cohort}
        protocol_problem, protocol_record = None, {}
        if ctx.algorithm.rounds is not None:  # a round protocol (secure aggregation) collects the cohort's answers
            accs, count, failures, protocol_record, protocol_problem = ctx.algorithm.rounds.fit(ctx, state, cohort, rctx, config, accs)
            used = list(durations)
        elif self.over_selection == 0:
            instructions = [Instruction(int(cid), {}) for cid in cohort]
            replies = ((instructions[pos].client_id, outcome) for pos, outcome in ctx.channel.run(message, instructions, ctx.timeout_s))
            accs, count = fold_replies(ctx, accs, replies, failures, fit_metrics)
            used = list(durations)
        elif is_live(ctx.channel):  # deployed: the first to arrive close the round
            accs, count, used = self._first_arrivals(ctx, message, cohort, accs, failures, fit_metrics)
        else:
            accs, count, used = self._by_virtual_arrival(ctx, message, cohort, durations, accs, failures, fit_metrics)
        new, stands, problem = finish_step(ctx, state, accs, count)
        problem = problem or protocol_problem
        clock = state.clock + max((durations[c] for c in used), default=0.0)
        record: dict[str, Any] = {
            **train_metrics(fit_metrics), **protocol_record, "round": r, "status": "ok" if stands else "skipped",
            "clients_sampled": len(cohort), "clients_succeeded": count, "clients_failed": len(failures),
        }
        if ctx.speeds.network is not None and ctx.speeds.network.on:  # the round's critical path, split
            slowest = max(used, key=lambda c: durations[c], default=None)
            if slowest is not None:
                record["network_s"] = ctx.speeds.transfer(slowest)
                record["compute_s"] = ctx.speeds.compute(slowest)
        if self.over_selection:
            record["clients_not_needed"] = len(cohort) - len(used)
        if problem:
            record["aggregate_error"] = problem
        return StepOutcome(replace(new, round=r, clock=clock), stands, record, failures)


    def _first_arrivals(self, ctx, message, cohort, accs, failures, fit_metrics):
        enough = self.needed(ctx)
        instructions = [Instruction(int(cid), {}) for cid in cohort]
        used: list[int] = []  # the clients whose outcome was taken, in arrival order
        results = ctx.channel.run(message, instructions, ctx.timeout_s, arrival_order=True)

        def replies():
            for pos, outcome in results:
                used.append(instructions[pos].client_id)
                yield instructions[pos].client_id, outcome

        try:
            accs, count = fold_replies(ctx, accs, replies(), failures, fit_metrics, enough=enough)
        finally:
            results.close()  # the tasks still out are dropped; their results are discarded on arrival
        return accs, count, used

    def _by_virtual_arrival(self, ctx, message, cohort, durations, accs, failures, fit_metrics):
        """Run the over-selected cohort in virtual arrival order, a batch at a time, only until enough
        updates were accepted: the same clients, and the same bits, in every simulation backend."""
        enough = self.needed(ctx)
        order = sorted((int(c) for c in cohort), key=lambda c: (durations[c], c))
        count, start = 0, 0
        while count < enough and start < len(order):
            batch = order[start:start + enough - count]
            start += len(batch)
            instructions = [Instruction(cid, {}) for cid in batch]
            replies = ((instructions[pos].client_id, outcome) for pos, outcome in ctx.channel.run(message, instructions, ctx.timeout_s))
            accs, n = fold_replies(ctx, accs, replies, failures, fit_metrics)
            count += n
        return accs, count, order[:start]


@dataclass(frozen=True)
class FedBuffSettings:
    """``[fedbuff]``: buffered asynchronous aggregation (server.policy = "fedbuff")."""

    buffer_size: int = 10  # K: arrivals per server step
    concurrency: int = 20  # M: clients training at once
    staleness_exponent: float = 0.5  # a: polynomial (1 + s) ** -a; hinge 1 / (a (s - b) + 1) past b
    staleness: str = "polynomial"  # constant | polynomial | hinge (FedAsync's staleness functions)
    hinge_b: int = 4  # hinge: versions of staleness still at full weight

    def __post_init__(self) -> None:
        check(1 <= self.buffer_size <= 1_000_000, "fedbuff.buffer_size", self.buffer_size, "an integer from 1 to 1000000")
        check(1 <= self.concurrency <= 1_000_000, "fedbuff.concurrency", self.concurrency, "an integer from 1 to 1000000")
        check(0 <= self.staleness_exponent < math.inf, "fedbuff.staleness_exponent", self.staleness_exponent, "a finite number >= 0")
        check(self.staleness in ("constant", "polynomial", "hinge"), "fedbuff.staleness", self.staleness,
              "one of constant, polynomial, hinge")
        check(self.hinge_b >= 0, "fedbuff.hinge_b", self.hinge_b, "an integer >= 0")

    def policy(self) -> "FedBuff":
        return FedBuff(self.buffer_size, self.concurrency, self.staleness_exponent, self.staleness, self.hinge_b)


class FedBuff:
    """Buffered asynchronous aggregation: ``buffer_size`` (K) arrivals per server step, ``concurrency``
    (M) clients training at once, updates scaled by ``(1+s)^-staleness_exponent``."""

    name = "fedbuff"

    def __init__(self, buffer_size: int = 10, concurrency: int = 20, staleness_exponent: float = 0.5,
                 staleness: str = "polynomial", hinge_b: int = 4) -> None:
        for key, v in (("fedbuff.buffer_size", buffer_size), ("fedbuff.concurrency", concurrency)):
            if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000):
                raise ConfigError(f"{key} is {v!r}; expected an integer from 1 to 1000000")
        self.buffer_size, self.concurrency = buffer_size, concurrency
        # polynomial: (1 + s)^-a; hinge: full weight up to hinge_b versions, then 1 / (a (s - b) + 1)
        self.staleness = staleness_weight(staleness_exponent, staleness_function(staleness, staleness_exponent, hinge_b))

    def check_state(self, st: Any, num_clients: int) -> None:
        if st is None:
            return
        if not isinstance(st, FedBuffState):
            raise ConfigError(f"the state holds a {type(st).__name__}, not FedBuff's; resume with the policy the run was started with")
        if len(st.in_flight) not in (0, self.concurrency) or any(not 0 <= w.client_id < num_clients for w in st.in_flight):
            raise ConfigError(f"the state has {len(st.in_flight)} clients in flight (ids up to "
                              f"{max((w.client_id for w in st.in_flight), default=0)}) but fedbuff.concurrency is "
                              f"{self.concurrency} and there are {num_clients} clients; resume with the settings it was started with")

    def _stale(self, work: InFlight, rctx: RoundContext, started_on: Groups | None = None,
               current: Groups | None = None) -> Reply | ClientFailure:
        """The arrival's outcome with every group passed through the staleness step (FedAsync, a
        subclass, also needs the groups the work started on and the current ones)."""
        if work.failure is not None:
            return work.failure
        reply = work.reply
        if not isinstance(reply.arrays, Mapping):
            return reply  # the algorithm's validation refuses it with a clear message
        scaled = {}
        for g, arrays in reply.arrays.items():
            u = ClientUpdate(work.client_id, arrays, reply.num_examples, reply.num_examples, version=work.version)
            scaled[g] = self.staleness.update(u, (), rctx)[0].delta if isinstance(arrays, Mapping) else arrays
        return replace(reply, arrays=scaled)

    def clients_per_step(self, num_clients: int) -> int:
        if self.concurrency > num_clients:
            raise ConfigError(f"fedbuff.concurrency is {self.concurrency} but there are only {num_clients} clients; "
                              "lower it to at most the number of clients")
        return self.buffer_size

    def _dispatch(self, st: FedBuffState, state: ServerState, ctx: StepContext, now: float) -> FedBuffState:
        busy = {w.client_id for w in st.in_flight}
        draws = rng(state.seed, st.dispatched, Stage.ASYNC_SAMPLE)
        cid = int(draws.integers(ctx.num_clients))
        tries = 0
        while cid in busy:  # at most M clients are busy, so this ends quickly while M << N
            tries += 1
            if tries > 32:  # M close to N: draw among the free ones directly
                free = np.setdiff1d(np.arange(ctx.num_clients), np.fromiter(busy, np.int64))
                cid = int(free[draws.integers(len(free))])
                break
            cid = int(draws.integers(ctx.num_clients))
        work = InFlight(now + ctx.speeds.duration(cid), st.dispatched, cid, state.version)
        return st._replace(dispatched=st.dispatched + 1, in_flight=tuple(sorted((*st.in_flight, work))))

    def _compute(self, st: FedBuffState, state: ServerState, ctx: StepContext) -> FedBuffState:
        """Run every task in flight not yet computed, one batch per model version."""
        todo = [w for w in st.in_flight if w.reply is None and w.failure is None]
        done: dict[int, tuple[Reply | None, ClientFailure | None]] = {}
        for version in sorted({w.version for w in todo}):
            works = [w for w in todo if w.version == version]
            groups = state.groups if version == state.version else st.snapshots[version]
            config = {**ctx.algorithm.config, "seed": state.seed, "version": version}
            message = Message("fit", groups, config, version)
            instructions = [Instruction(w.client_id, {**ctx.records("fit", w.seq + 1), "round": w.seq + 1}) for w in works]
            for pos, outcome in ctx.channel.run(message, instructions, ctx.timeout_s):
                failed = isinstance(outcome, ClientFailure)
                done[works[pos].seq] = (None, outcome) if failed else (outcome, None)
        in_flight = tuple(w._replace(reply=done[w.seq][0], failure=done[w.seq][1]) if w.seq in done else w
                          for w in st.in_flight)
        return st._replace(in_flight=in_flight)

    def step(self, state: ServerState, ctx: StepContext) -> StepOutcome:
        if is_live(ctx.channel):  # real arrival order
            return live_step(self, state, ctx)
        r = state.round + 1
        st: FedBuffState = state.policy or FedBuffState(0, (), {})
        clock = state.clock
        while len(st.in_flight) < self.concurrency:
            st = self._dispatch(st, state, ctx, clock)
        rctx = RoundContext(r, state.seed, self.buffer_size, ctx.num_clients, state.version)
        accs = ctx.algorithm.start(state.groups, state.steps, rctx)
        failures: list[ClientFailure] = []
        fit_metrics, staleness = ctx.mean("fit"), []
        count = 0
        for i in range(self.buffer_size):
            if st.in_flight[0].reply is None and st.in_flight[0].failure is None:
                st = self._compute(st, state, ctx)
            work, st = st.in_flight[0], st._replace(in_flight=st.in_flight[1:])
            clock = work.finish
            started_on = state.groups if work.version == state.version else st.snapshots.get(work.version)
            outcome = self._stale(work, rctx, started_on, state.groups)
            accs, n = fold_replies(ctx, accs, [(work.client_id, outcome)], failures, fit_metrics)
            if n:
                staleness.append(state.version - work.version)
            count += n
            if i < self.buffer_size - 1:  # a slot is free: start the next client on the current model
                st = self._dispatch(st, state, ctx, clock)
        new, stands, problem = finish_step(ctx, state, accs, count)
        st = self._dispatch(st, new, ctx, clock)  # the K-th slot frees at the server step: the new model
        snapshots = dict(st.snapshots)
        if stands:
            snapshots[state.version] = state.groups  # work started on it is still in flight
        referenced = {w.version for w in st.in_flight}
        snapshots = {v: g for v, g in snapshots.items() if v in referenced and v != new.version}
        record: dict[str, Any] = {
            **train_metrics(fit_metrics), "round": r, "status": "ok" if stands else "skipped",
            "clients_sampled": self.buffer_size, "clients_succeeded": count, "clients_failed": len(failures),
            "staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
            "staleness_max": int(max(staleness)) if staleness else 0,
        }
        if problem:
            record["aggregate_error"] = problem
        new = replace(new, round=r, clock=clock, policy=st._replace(snapshots=snapshots))
        return StepOutcome(new, stands, record, failures)


# step.py's names are taken from here too: by the loop, and by checkpoints written before step.py
# existed (their policy state names cohort.server.policies:FedBuffState and :InFlight)
__all__ = ["ClientSpeeds", "FedBuff", "FedBuffSettings", "FedBuffState", "InFlight", "StepContext", "StepOutcome", "Synchronous"]
