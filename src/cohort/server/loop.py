"""The round loop: the only place where state passes from one round to the next.

    sample cohort ─► configure ─► channel.run("fit") ─► fold replies in cohort order ─► finish
    ─► evaluate (centralized, federated) ─► record ─► stop at the round limit or the target
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any

from cohort.algorithms.base import Algorithm
from cohort.channel.base import Channel, Reply
from cohort.aggregation.weighting import is_example_count
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError, RoundFailed, UpdateRejected
from cohort.core.seeding import Stage
from cohort.core.types import ClientFailure, ClientUpdate, Instruction, RoundContext
from cohort.server.sampling import cohort_size, sample_cohort
from cohort.server.state import ServerState

Evaluate = Callable[[NamedArrays], Mapping[str, float]]
OnRound = Callable[[Mapping[str, Any], ServerState], None]
MAX_FAILURES_RECORDED = 10
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week; longer waits overflow the OS timers


@dataclass(frozen=True)
class Target:
    """Stop once a round's ``metric`` reaches ``value`` (``mode="max"``: ≥ value; ``"min"``: ≤ value)."""

    metric: str
    value: float
    mode: str = "max"

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"target mode is {self.mode!r}; expected 'max' or 'min'")

    def reached(self, record: Mapping[str, Any]) -> bool:
        v = record.get(self.metric)
        return v is not None and (v >= self.value if self.mode == "max" else v <= self.value)


@dataclass(frozen=True)
class LoopSettings:
    rounds: int  # round limit
    fraction: float = 0.1  # C: fraction of clients sampled per round
    min_clients: int = 1  # at least this many clients per round
    min_successful_clients: int = 1  # a round stands only with this many accepted updates
    max_failed_rounds: int = 3  # consecutive rounds that do not stand before RoundFailed
    round_timeout_s: float | None = None  # deadline for a round's fit, and for its federated evaluation
    evaluate_every: int = 1  # evaluate every k rounds, and always after the last
    federated_fraction: float = 0.0  # fraction of clients evaluated on their held-out data; 0: none
    target: Target | None = None  # stop early once reached

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds is {self.rounds}; expected >= 1")
        if self.min_successful_clients < 1:
            raise ConfigError(f"min_successful_clients is {self.min_successful_clients}; expected >= 1")
        if self.max_failed_rounds < 1:
            raise ConfigError(f"max_failed_rounds is {self.max_failed_rounds}; expected >= 1")
        if self.round_timeout_s is not None and not 0 < self.round_timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError(f"round_timeout_s is {self.round_timeout_s}; expected seconds in (0, one week] (or None: no deadline)")
        if self.evaluate_every < 1:
            raise ConfigError(f"evaluate_every is {self.evaluate_every}; expected >= 1")
        if not 0 <= self.federated_fraction <= 1:
            raise ConfigError(f"federated_fraction is {self.federated_fraction}; expected 0 <= fraction <= 1")

    def check(self, num_clients: int) -> None:
        """Raise ConfigError now, before any training, if these settings cannot work for ``num_clients``."""
        size = cohort_size(num_clients, self.fraction, self.min_clients)
        if self.min_successful_clients > size:
            raise ConfigError(
                f"min_successful_clients (server.min_successful_clients in a config) is {self.min_successful_clients} "
                f"but a round samples only {size} of {num_clients} clients (fraction {self.fraction}); "
                "lower it or raise the fraction (server.fraction)"
            )


def run_rounds(
    state: ServerState,
    *,
    algorithm: Algorithm,
    channel: Channel,
    num_clients: int,
    settings: LoopSettings,
    evaluate: Evaluate | None = None,
    on_round: Sequence[OnRound] = (),
) -> tuple[ServerState, str]:
    """Run rounds from ``state`` until ``settings.rounds`` or the target. Returns the final state and
    why it stopped ("rounds" or "target"). Raises RoundFailed (carrying the last good state as
    ``.state``) after ``max_failed_rounds`` consecutive rounds without enough updates."""
    settings.check(num_clients)
    while state.round < settings.rounds:
        state, record = run_round(state, algorithm=algorithm, channel=channel, num_clients=num_clients,
                                  settings=settings, evaluate=evaluate)
        for callback in on_round:
            callback(record, state)
        if settings.target is not None and settings.target.reached(record):
            return state, "target"
    return state, "rounds"


def run_round(state: ServerState, *, algorithm: Algorithm, channel: Channel, num_clients: int,
              settings: LoopSettings, evaluate: Evaluate | None = None) -> tuple[ServerState, dict[str, Any]]:
    """One round from ``state``: the next state and the round's record."""
    started = time.perf_counter()
    sent0, received0 = channel.bytes_sent, channel.bytes_received
    r, seed = state.round + 1, state.seed
    cohort = sample_cohort(num_clients, cohort_size(num_clients, settings.fraction, settings.min_clients), seed, r)
    config = {**algorithm.configure(r), "round": r, "seed": seed}
    instructions = [Instruction(int(cid), config) for cid in cohort]

    aggregator = algorithm.aggregator
    acc = aggregator.start(state.arrays, state.aggregator, RoundContext(r, seed, len(cohort)))
    failures: list[ClientFailure] = []
    fit_metrics = _WeightedMean()
    replies = channel.run("fit", state.arrays, instructions, settings.round_timeout_s)
    for ins, reply in _in_cohort_order(replies, instructions):
        if isinstance(reply, ClientFailure):
            failures.append(reply)
            continue
        update = ClientUpdate(ins.client_id, reply.delta, reply.num_examples, reply.num_examples, reply.metrics)
        try:
            acc = aggregator.add(acc, update)
        except UpdateRejected as e:
            failures.append(ClientFailure(ins.client_id, "validate", str(e)))
            continue
        fit_metrics.add(reply.metrics, reply.num_examples)

    stands, problem = acc.count >= settings.min_successful_clients, None
    if stands:
        try:
            arrays, agg_state = aggregator.finish(acc)
        except UpdateRejected as e:
            stands, problem = False, str(e)
    if stands:
        state = replace(state, round=r, arrays=arrays, aggregator=agg_state, failed_rounds=0)
    else:
        state = replace(state, round=r, failed_rounds=state.failed_rounds + 1)

    record: dict[str, Any] = {
        # clients' own fit metrics are about training: named train_*, never a key of the loop's own
        **{k if k.startswith("train_") else f"train_{k}": v for k, v in fit_metrics.result().items()},
        "round": r,
        "status": "ok" if stands else "skipped",
        "clients_sampled": len(cohort),
        "clients_succeeded": acc.count,
        "clients_failed": len(failures),
    }
    if problem:
        record["aggregate_error"] = problem
    evaluate_now = r % settings.evaluate_every == 0 or r == settings.rounds
    if evaluate is not None and evaluate_now:
        record.update(evaluate(state.arrays))
    if settings.federated_fraction > 0 and evaluate_now:
        metrics, eval_failures = _federated_evaluation(state, channel, num_clients, settings)
        record.update(metrics, evaluations_failed=len(eval_failures))
        failures += eval_failures
    record["bytes_sent"] = channel.bytes_sent - sent0
    record["bytes_received"] = channel.bytes_received - received0
    record["seconds"] = time.perf_counter() - started
    if failures:
        record["failures"] = [f"client {f.client_id} ({f.stage}): {f.reason}" for f in failures[:MAX_FAILURES_RECORDED]]
    state = replace(state, history=(*state.history, record))

    if not stands and state.failed_rounds >= settings.max_failed_rounds:
        shown = "\n  ".join([*([problem] if problem else []), *record.get("failures", [])[:3]]) or "no replies"
        error = RoundFailed(
            f"round {r}: {acc.count} of {len(cohort)} clients succeeded (min_successful_clients="
            f"{settings.min_successful_clients}), and no round has stood for {state.failed_rounds} rounds in a row. "
            f"First problems:\n  {shown}"
        )
        error.state = state  # the run so far is not lost: the last good arrays are in it
        raise error
    return state, record


def _federated_evaluation(state: ServerState, channel: Channel, num_clients: int, settings: LoopSettings
                          ) -> tuple[dict[str, float], list[ClientFailure]]:
    """Example-weighted means of the sampled clients' held-out loss and metrics, and the failures."""
    size = cohort_size(num_clients, settings.federated_fraction)
    clients = sample_cohort(num_clients, size, state.seed, state.round, Stage.EVAL_SAMPLE)
    config = {"round": state.round, "seed": state.seed}
    instructions = [Instruction(int(cid), config) for cid in clients]
    mean, failures = _WeightedMean(), []
    replies = channel.run("evaluate", state.arrays, instructions, settings.round_timeout_s)
    for ins, reply in _in_cohort_order(replies, instructions):
        if isinstance(reply, ClientFailure):
            failures.append(reply)
        elif is_example_count(reply.num_examples) and isinstance(reply.loss, Real) and math.isfinite(reply.loss):
            metrics = reply.metrics if isinstance(reply.metrics, Mapping) else {}
            mean.add({**metrics, "loss": reply.loss}, reply.num_examples)
        else:
            failures.append(ClientFailure(ins.client_id, "validate",
                                          f"evaluation result has loss {reply.loss!r} and num_examples "
                                          f"{reply.num_examples!r}; expected a finite loss and an integer >= 1"))
    return {f"federated_{k}": v for k, v in mean.result().items()}, failures


def _in_cohort_order(replies: Iterable[tuple[int, Reply]], instructions: Sequence[Instruction]
                     ) -> Iterator[tuple[Instruction, Reply]]:
    """Replies in cohort order, each as soon as all before it have arrived.

    Floating-point sums depend on their order; folding in cohort order makes the global arrays the same
    whatever order replies arrive in (any backend, any worker count), while at most the replies that
    arrived ahead of a slower one wait here.
    """
    waiting: dict[int, Reply] = {}
    next_pos = 0
    for pos, reply in replies:
        waiting[pos] = reply
        while next_pos in waiting:
            yield instructions[next_pos], waiting.pop(next_pos)
            next_pos += 1
    for pos in range(next_pos, len(instructions)):  # a channel that broke its promise of one reply each
        ins = instructions[pos]
        yield ins, waiting.pop(pos, None) or ClientFailure(ins.client_id, "transport", "the channel returned no reply")


class _WeightedMean:
    """Example-weighted means of numeric metrics across clients."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: Mapping[str, Any], weight: float) -> None:
        if not isinstance(metrics, Mapping):  # a client's metrics are informative; bad ones are dropped
            return
        for k, v in metrics.items():
            if not isinstance(k, str) or not isinstance(v, Real) or isinstance(v, bool):
                continue
            try:
                value = float(v) * weight
            except OverflowError:  # an int too large for a float
                continue
            if math.isfinite(value):
                self.sums[k] = self.sums.get(k, 0.0) + value
                self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: s / self.weights[k] for k, s in self.sums.items() if self.weights[k] > 0}
