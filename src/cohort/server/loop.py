"""The round loop: the only place where state passes from one round to the next.

    policy step (sample ─► send ─► fold in cohort order ─► server step) ─► evaluate (centralized,
    federated) ─► record ─► yield (state, record) ─► stop at the round limit or the target

``run_rounds`` is a generator: checkpointing, tracking and a live view subscribe to what it yields
instead of being patched into it. ``run`` drives it to the end for scripts.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any

from cohort.algorithms.base import Algorithm
from cohort.aggregation.weighting import is_example_count
from cohort.channel.base import Channel, groups_nbytes, is_live
from cohort.core.errors import ConfigError, RoundFailed
from cohort.core.limits import MAX_ROUNDS, MAX_TIMEOUT_S
from cohort.core.seeding import Stage
from cohort.core.types import ClientFailure, EvaluateResult, FailureStage, Instruction, Message, RoundContext
from cohort.server.checkpoint import check_fits
from cohort.server.policies import ClientSpeeds, FedBuff, StepContext, Synchronous
from cohort.server.records import WeightedMean, checked_evaluation, client_row, failure_lines
from cohort.server.sampling import cohort_size, sample_cohort
from cohort.server.state import ServerState

Evaluate = Callable[[Mapping[str, Any]], Mapping[str, float]]
TaskConfig = Callable[[str, int], Mapping[str, Any]]  # (task, round) -> what the task's messages add to their config


@dataclass(frozen=True)
class RoundEvaluate:
    """A server-side evaluation that is told the round: ``fn(arrays, round) -> metrics`` (round 0: the
    initial model). A plain ``evaluate(arrays)`` is one that does not need it."""

    fn: Callable[[Mapping[str, Any], int], Mapping[str, float]]

    def __call__(self, arrays: Mapping[str, Any], round: int = 0) -> Mapping[str, float]:
        return self.fn(arrays, round)


def evaluated(evaluate: Callable, arrays: Mapping[str, Any], r: int) -> Mapping[str, float]:
    """``evaluate``'s metrics of ``arrays`` after round ``r``, whether it takes the round or not."""
    return evaluate(arrays, r) if isinstance(evaluate, RoundEvaluate) else evaluate(arrays)
OnRound = Callable[[Mapping[str, Any], ServerState], None]
Policy = Synchronous | FedBuff


def _is_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class Target:
    """Stop once a round's ``metric`` reaches ``value`` (``mode="max"``: ≥ value; ``"min"``: ≤ value)."""

    metric: str
    value: float
    mode: str = "max"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"target metric is {self.metric!r}; expected a metric name such as 'accuracy'")
        if not (_is_real(self.value) and math.isfinite(self.value)):
            raise ConfigError(f"target value is {self.value!r}; expected a finite number")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"target mode is {self.mode!r}; expected 'max' or 'min'")

    def reached(self, record: Mapping[str, Any]) -> bool:
        v = record.get(self.metric)
        return v is not None and (v >= self.value if self.mode == "max" else v <= self.value)


@dataclass(frozen=True)
class LoopSettings:
    rounds: int  # round limit (server steps under an asynchronous policy)
    fraction: float = 1.0  # C: fraction of clients sampled per round (synchronous policy)
    min_clients: int = 1  # at least this many clients per round (synchronous policy)
    min_successful_clients: int = 1  # a round stands only with this many accepted updates
    max_failed_rounds: int = 3  # consecutive rounds that do not stand before RoundFailed
    round_timeout_s: float | None = None  # deadline for a round's fit, and for its federated evaluation
    evaluate_every: int = 1  # evaluate every k rounds, and always after the last
    federated_fraction: float = 0.0  # fraction of clients evaluated on their held-out data; 0: none
    target: Target | None = None  # stop early once reached
    policy: FedBuff | None = None  # None: synchronous rounds of a sampled cohort
    speed_spread: float = 1.0  # simulation: fastest/slowest client speed on the virtual clock
    over_selection: float = 0.0  # sample this share more clients than a round needs; close it when enough reported
    network: tuple[float, float, float] | None = None  # simulation: (latency_s, bandwidth_mbps, spread) per client
    record_fields: tuple[tuple[str, Any], ...] = ()  # stamped into every round's record, e.g. ("update_bound", "auto")
    evaluate_initial: bool = False  # evaluate the initial model too, as round 0 (centralized and federated)
    task_config: TaskConfig | None = None  # records a server app adds to each task's config ({"app": ...})
    metrics: Mapping[str, Callable[[], Any]] | None = None  # task -> a new aggregation of the clients' metrics (default: WeightedMean)

    def metrics_mean(self, task: str):
        """A fresh aggregation of the clients' metrics of ``task``: the app's own, else the example-weighted mean."""
        make = (self.metrics or {}).get(task)
        return make() if make is not None else WeightedMean()

    def __post_init__(self) -> None:
        checks = (
            ("rounds", _is_int(self.rounds) and 1 <= self.rounds <= MAX_ROUNDS, f"an integer from 1 to {MAX_ROUNDS}"),
            ("min_successful_clients", _is_int(self.min_successful_clients) and self.min_successful_clients >= 1, "an integer >= 1"),
            ("max_failed_rounds", _is_int(self.max_failed_rounds) and 1 <= self.max_failed_rounds <= MAX_ROUNDS, "an integer >= 1"),
            ("round_timeout_s", self.round_timeout_s is None or (_is_real(self.round_timeout_s) and 0 < self.round_timeout_s <= MAX_TIMEOUT_S),
             "seconds in (0, one week], or None for no deadline"),
            ("evaluate_every", _is_int(self.evaluate_every) and 1 <= self.evaluate_every <= MAX_ROUNDS, "an integer >= 1"),
            ("federated_fraction", _is_real(self.federated_fraction) and 0 <= self.federated_fraction <= 1, "0 <= fraction <= 1"),
            ("target", self.target is None or isinstance(self.target, Target), "a cohort.Target or None"),
            ("policy", self.policy is None or isinstance(self.policy, FedBuff), "None (synchronous) or a cohort.FedBuff"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name} is {getattr(self, name)!r}; expected {expected}")
        Synchronous(self.fraction, self.min_clients, self.over_selection)  # checks all three
        ClientSpeeds(0, self.speed_spread)  # checks the spread
        if self.network is not None:
            from cohort.server.network import NetworkModel

            NetworkModel(0, *self.network)  # checks its values

    def make_policy(self) -> Policy:
        return self.policy if self.policy is not None else Synchronous(self.fraction, self.min_clients, self.over_selection)

    def check(self, num_clients: int, reported: Iterable[str] | None = None) -> int:
        """Raise ConfigError now, before any training, if these settings cannot work for
        ``num_clients`` (or if the target's metric is not among ``reported``, when given). Returns
        the clients each round samples."""
        if not (_is_int(num_clients) and num_clients >= 1):
            raise ConfigError(f"num_clients is {num_clients!r}; expected an integer >= 1")
        if self.min_clients > num_clients:
            raise ConfigError(f"server.min_clients is {self.min_clients} but there are only {num_clients} clients; lower it")
        size = self.make_policy().clients_per_step(num_clients)
        if self.min_successful_clients > size:
            raise ConfigError(
                f"server.min_successful_clients is {self.min_successful_clients} but a round takes only {size} of "
                f"{num_clients} clients' updates; lower it, or raise server.fraction (or fedbuff.buffer_size)")
        if reported is not None and self.target is not None and self.target.metric not in set(reported):
            raise ConfigError(f"evaluate.target_metric is {self.target.metric!r}, which this run does not report; "
                              f"expected one of {', '.join(sorted(set(reported)))}")
        return size


def run_rounds(state: ServerState, *, algorithm: Algorithm, channel: Channel, num_clients: int,
               settings: LoopSettings, evaluate: Evaluate | None = None
               ) -> Generator[tuple[ServerState, dict[str, Any]], None, str]:
    """Run rounds from ``state`` until ``settings.rounds`` or the target, yielding ``(state, record)``
    after each. Returns (as the generator's value) why it stopped: "rounds", "target", or "privacy
    budget: ..." (the next round would cross ``epsilon_max``; a budget that allows no round at all is
    a ConfigError before any training). Raises
    RoundFailed, carrying the last state, after ``max_failed_rounds`` consecutive rounds without
    enough updates (the failing round is yielded first, so subscribers keep it)."""
    if not isinstance(algorithm, Algorithm):
        hint = " (did you pass the factory instead of calling it, e.g. cohort.fedavg instead of cohort.fedavg()?)" if callable(algorithm) else ""
        raise ConfigError(f"algorithm is a {type(algorithm).__name__}; expected a cohort.Algorithm{hint}")
    if not isinstance(state, ServerState):
        raise ConfigError(f"state is a {type(state).__name__}; expected a cohort.ServerState (see cohort.initial_state)")
    size = settings.check(num_clients)
    algorithm.check_cohort(size)
    policy = settings.make_policy()
    check_protections(algorithm, settings, size)
    check_fits(state, algorithm)
    policy.check_state(state.policy, num_clients)
    if state.history and settings.target is not None and settings.target.reached(state.history[-1]):
        return "target"  # a resumed run that had already reached its target has nothing left to do
    network = None
    if settings.network is not None:
        from cohort.server.network import NetworkModel

        network = NetworkModel(state.seed, *settings.network)
    model_bytes = groups_nbytes(state.groups)  # every group travels down, and the same comes back up
    ctx = StepContext(algorithm, channel, num_clients, ClientSpeeds(state.seed, settings.speed_spread, network, model_bytes),
                      settings.min_successful_clients, settings.round_timeout_s, task_config=settings.task_config,
                      metrics=settings.metrics_mean)
    warned = False
    if settings.evaluate_initial and state.round == 0 and not state.history:
        state, record = _round_zero(state, channel, num_clients, settings, evaluate, algorithm)
        yield state, record
    while state.round < settings.rounds:
        why = privacy_refusal(algorithm, state, num_clients, policy, channel)
        if why:
            if not state.history:
                raise ConfigError(f"privacy.epsilon_max allows no round: {why}")
            return f"privacy budget: {why}"
        started = time.perf_counter()
        sent0, received0 = channel.bytes_sent, channel.bytes_received
        ctx.rows.clear()
        ctx.aggregate_s = 0.0
        out = policy.step(state, ctx)
        stepped = time.perf_counter()
        state, record, failures = out.state, out.record, list(out.failures)
        r = state.round
        rows = [*ctx.rows, *(client_row("evaluate" if f.stage == FailureStage.EVALUATE else "fit", f.client_id, f)
                             for f in failures)]
        record["version"] = state.version
        record.update(settings.record_fields)
        record.update(algorithm.report(state.steps))
        if r % settings.evaluate_every == 0 or r == settings.rounds:
            if evaluate is not None:
                record.update(checked_evaluation(evaluated(evaluate, dict(state.model), r)))
            if settings.federated_fraction > 0:
                metrics, eval_failures = federated_evaluation(state, channel, num_clients, settings, rows, algorithm.rounds)
                record.update(metrics, evaluations_failed=len(eval_failures))
                failures += eval_failures
                rows += [client_row("evaluate", f.client_id, f) for f in eval_failures]
        ended = time.perf_counter()
        record["fit_seconds"] = max(0.0, stepped - started - ctx.aggregate_s)  # the clients' part, and the transfers
        record["aggregate_seconds"] = ctx.aggregate_s
        record["evaluate_seconds"] = ended - stepped
        record["bytes_sent"] = channel.bytes_sent - sent0
        record["bytes_received"] = channel.bytes_received - received0
        record["seconds"] = ended - started
        record["simulated_time"] = state.clock
        if failures:
            record["failures"] = failure_lines(failures)
        state = replace(state, history=(*state.history, record))
        if settings.target is not None and not warned and settings.target.metric not in record and (
                r % settings.evaluate_every == 0 or r == settings.rounds):
            warned = True  # the CLI refuses this before any round; API callers get told once
            warnings.warn(f"the target's metric {settings.target.metric!r} is not in round {r}'s record "
                          f"(it has {', '.join(sorted(k for k in record if k not in ('failures',)))}); "
                          "the target can never be reached", stacklevel=2)
        yield state, {**record, "clients": [{"round": r, **row} for row in rows]}  # the rows are not kept in the history
        if not out.stands and state.failed_rounds >= settings.max_failed_rounds:
            shown = "\n  ".join([*([record["aggregate_error"]] if "aggregate_error" in record else []),
                                 *record.get("failures", [])[:3]]) or "no replies"
            raise RoundFailed(
                f"round {r}: {record['clients_succeeded']} of {record['clients_sampled']} clients succeeded "
                f"(min_successful_clients={settings.min_successful_clients}), and no round has stood for "
                f"{state.failed_rounds} rounds in a row. First problems:\n  {shown}", state=state)
        if settings.target is not None and settings.target.reached(record):
            return "target"
    return "rounds"


def _round_zero(state: ServerState, channel: Channel, num_clients: int, settings: LoopSettings, evaluate, algorithm):
    """The initial model's evaluation, recorded as round 0 (nothing trained, nothing sent up)."""
    started = time.perf_counter()
    record: dict[str, Any] = {"round": 0, "status": "initial", "version": state.version, "clients_sampled": 0,
                              "clients_succeeded": 0, "clients_failed": 0}
    rows: list = []
    failures: list[ClientFailure] = []
    if evaluate is not None:
        record.update(checked_evaluation(evaluated(evaluate, dict(state.model), 0)))
    if settings.federated_fraction > 0:
        metrics, failures = federated_evaluation(state, channel, num_clients, settings, rows, algorithm.rounds)
        record.update(metrics, evaluations_failed=len(failures))
        rows += [client_row("evaluate", f.client_id, f) for f in failures]
    record["evaluate_seconds"] = record["seconds"] = time.perf_counter() - started
    if failures:
        record["failures"] = failure_lines(failures)
    state = replace(state, history=(*state.history, record))
    return state, {**record, "clients": [{"round": 0, **row} for row in rows]}


def check_protections(algorithm: Algorithm, settings: LoopSettings, size: int | None = None) -> None:
    """Differential privacy is accounted for synchronous rounds of a uniformly sampled cohort; a round
    protocol (secure aggregation) runs synchronous rounds whose cohort it checks."""
    if algorithm.private and (settings.policy is not None or settings.over_selection):
        raise ConfigError("differential privacy is accounted for rounds of a uniformly sampled cohort: use "
                          "server.policy = 'sync' without server.over_selection (the fastest clients, or buffered "
                          "asynchronous arrivals, are not a uniform sample)")
    if algorithm.rounds is not None:
        if settings.policy is not None or settings.over_selection:
            raise ConfigError(f"{algorithm.rounds.name} runs synchronous rounds: use server.policy = 'sync' without "
                              "server.over_selection")
        if size is not None:
            algorithm.rounds.check(size)


def privacy_refusal(algorithm: Algorithm, state: ServerState, num_clients: int, policy: Policy,
                    channel: Channel | None = None) -> str | None:
    """Why the next round may not run (a privacy budget it would cross), or None; raises ConfigError
    for privacy settings that cannot work with these rounds. Callers check a new run with it before
    they write anything."""
    if not algorithm.private:
        return None
    population = len(channel.available()) if channel is not None and is_live(channel) else num_clients
    population = max(1, population)
    ctx = RoundContext(state.round + 1, state.seed, policy.clients_per_step(population), num_clients, state.version,
                       population=population)
    return algorithm.refusal(state.steps, ctx)


def run(state: ServerState, *, on_round: Iterable[OnRound] = (), **kwargs) -> tuple[ServerState, str]:
    """Drive :func:`run_rounds` to its end, calling each ``on_round(record, state)``; returns the
    final state and why the run stopped."""
    rounds = run_rounds(state, **kwargs)
    callbacks = list(on_round)
    while True:
        try:
            state, record = next(rounds)
        except StopIteration as stop:
            return state, stop.value
        for callback in callbacks:
            callback(record, state)


def federated_evaluation(state: ServerState, channel: Channel, num_clients: int, settings: LoopSettings,
                         rows: list | None = None, rounds=None) -> tuple[dict[str, float], list[ClientFailure]]:
    """Example-weighted means of the sampled clients' held-out loss and metrics, and the failures; with
    ``rows``, each client's result is appended to it as well. With ``rounds`` (the algorithm's round
    protocol) the protocol evaluates them: under secure aggregation the clients' figures reach the server
    only as sums, the means count every client once, and a row says only that the client took part."""
    size = cohort_size(num_clients, settings.federated_fraction)
    clients = sample_cohort(num_clients, size, state.seed, state.round, Stage.EVAL_SAMPLE)
    config = {"round": state.round, "seed": state.seed, "version": state.version}
    if settings.task_config is not None:
        config.update(settings.task_config("evaluate", state.round))
    if rounds is not None:
        metrics, failures, taken = rounds.evaluate(channel, settings.round_timeout_s, state, clients, config)
        if rows is not None:
            rows.extend(taken)
        return metrics, failures
    message = Message("evaluate", state.groups, config, state.version)
    instructions = [Instruction(int(cid), {}) for cid in clients]
    mean, failures = settings.metrics_mean("evaluate"), []
    for pos, reply in channel.run(message, instructions, settings.round_timeout_s):
        cid = instructions[pos].client_id
        if isinstance(reply, ClientFailure):
            failures.append(reply)
        elif isinstance(reply, EvaluateResult) and is_example_count(reply.num_examples) and _is_real(reply.loss) and math.isfinite(reply.loss):
            metrics = reply.metrics if isinstance(reply.metrics, Mapping) else {}
            mean.add({**metrics, "loss": reply.loss}, reply.num_examples)
            if rows is not None:
                rows.append(client_row("evaluate", cid, reply))
        else:
            failures.append(ClientFailure(cid, FailureStage.VALIDATE,
                                          f"evaluation result has loss {getattr(reply, 'loss', None)!r} and num_examples "
                                          f"{getattr(reply, 'num_examples', None)!r}; expected a finite loss and an integer >= 1"))
    return {f"federated_{k}": v for k, v in mean.result().items()}, failures
