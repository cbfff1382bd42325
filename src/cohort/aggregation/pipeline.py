"""Aggregation as a pipeline of small steps, in optax's shape.

    validate ─► per-client steps ─► [privacy: clip] ─► combine ─► [privacy: noise] ─► global steps
            ─► divide by total weight ─► server optimizer

A :class:`Step` is ``NamedTuple(init, update)``: ``init(global_arrays) -> state`` and
``update(value, state, ctx) -> (value, state)``; state is returned, never mutated. Per-client steps map a
:class:`ClientUpdate`; global steps map an :class:`Aggregate`, which holds a *sum* and its total weight,
so that a sum-only combine (secure aggregation) or sum noise (central DP) can stand in without knowing
about the mean; the division happens once, at the very end. The server optimizer maps the mean delta to
the step added to the global arrays (FedAvg is ``sgd(1.0)``). Build a whole pipeline with
:func:`cohort.aggregation.process`.

A :class:`Mechanism` (central differential privacy, ``cohort.privacy``) holds both ends of one
guarantee with one state: it clips each update after the per-client steps and noises the sum right
after the combine, and its state (the clip, the privacy ledger) is checkpointed with the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from cohort.aggregation.bound import Bound
from cohort.core.arrays import NamedArrays, add
from cohort.core.limits import MAX_MODEL_ABS
from cohort.core.errors import UpdateRejected
from cohort.core.types import ClientUpdate, RoundContext


class Step(NamedTuple):
    """A pure transform with explicit state: ``update(value, state, ctx) -> (value, state)``."""

    init: Callable[[NamedArrays], Any]
    update: Callable[[Any, Any, RoundContext], tuple[Any, Any]]


def chain(*steps: Step) -> Step:
    """Run ``steps`` in order; the state is the tuple of their states."""
    for i, step in enumerate(steps):
        if not isinstance(step, Step):
            hint = " (did you pass the factory instead of calling it?)" if callable(step) else ""
            raise TypeError(f"chain() argument {i} is a {type(step).__name__}; expected a Step{hint}")

    def init(arrays: NamedArrays) -> tuple:
        return tuple(step.init(arrays) for step in steps)

    def update(value: Any, state: tuple, ctx: RoundContext) -> tuple[Any, tuple]:
        if len(state) != len(steps):
            raise ValueError(f"chain state has {len(state)} entries for {len(steps)} steps; was init() called?")
        new_state = []
        for step, s in zip(steps, state):
            value, s = step.update(value, s, ctx)
            new_state.append(s)
        return value, tuple(new_state)

    return Step(init, update)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What a combine produces: ``delta_sum / total_weight`` is the combined delta."""

    delta_sum: NamedArrays  # Σ weight · delta, float64
    total_weight: float
    num_clients: int


class Combine(NamedTuple):
    """Folds updates into an accumulator one at a time, as they arrive.

    ``init(global_arrays) -> acc``; ``add(acc, update) -> acc`` (the accumulator belongs to the round and
    may be updated in place; the update never is); ``result(acc) -> Aggregate``.
    """

    init: Callable[[NamedArrays], Any]
    add: Callable[[Any, ClientUpdate], Any]
    result: Callable[[Any], Aggregate]
    kind: str = "sum"  # "sum": result() is a weighted sum and its weight; "robust": the combined delta, weight 1
    check: Callable[[int], None] = lambda n: None  # raises ConfigError if rounds of n updates cannot work


class Mechanism(NamedTuple):
    """A privacy mechanism on the sum: ``clip`` bounds each update's contribution, ``noise`` is added
    to the sum; they share one state, across rounds. ``report(state)`` gives the metrics every round
    records (ε spent, the clip); ``refusal(state, ctx)`` says why one more round (its context:
    cohort and population) may not run (a budget it would cross), or None, and raises ConfigError
    for settings that cannot work with that round."""

    init: Callable[[NamedArrays], Any]
    clip: Callable[[ClientUpdate, Any, RoundContext], tuple[ClientUpdate, Any]]
    noise: Callable[["Aggregate", Any, RoundContext], tuple["Aggregate", Any]]
    report: Callable[[Any], dict[str, float]]
    refusal: Callable[[Any, RoundContext], str | None]


@dataclass(frozen=True)
class Precombined:
    """A round's accumulator when the sum arrived already combined (secure aggregation): the
    per-client steps, the privacy clip and the combine did not run on the server."""

    aggregate: "Aggregate"


class AggregatorState(NamedTuple):
    """The state of each part of a pipeline: what a checkpoint writes and a resume reads back."""

    pre: Any
    post: Any
    server_optimizer: Any
    privacy: Any = None  # the Mechanism's state; None without one
    bound: Any = None  # the update bound's state (recent norms and weights); None without one


class RoundAccumulator(NamedTuple):
    """One round in progress: what has been folded in so far."""

    arrays: NamedArrays  # the global arrays of the round
    ctx: RoundContext
    state: AggregatorState
    acc: Any
    count: int
    seen: tuple = ()  # the bound's notes on each update folded or held this round (norm, weight)
    held: tuple = ()  # updates over the provisional bound: folded, bounded, when the round ends


@dataclass(frozen=True)
class Aggregator:
    """A whole server-side pipeline; build one with :func:`process`."""

    pre: Step  # per-client steps, validation first
    combine: Combine
    post: Step  # global steps on the sum
    server_optimizer: Step  # mean delta -> step added to the global arrays
    privacy: Mechanism | None = None  # clips each update and noises the sum (central DP)
    bound: Bound | None = None  # bounds each update's norm and weight by the recent updates' medians
    # how updates arrive encoded (a compression): (the update's arrays, the global arrays) -> the dense update,
    # before validation; raises UpdateRejected on anything that does not decode
    decode: Callable[[NamedArrays, NamedArrays], NamedArrays] | None = None

    def init(self, arrays: NamedArrays) -> AggregatorState:
        return AggregatorState(self.pre.init(arrays), self.post.init(arrays), self.server_optimizer.init(arrays),
                               self.privacy.init(arrays) if self.privacy is not None else None,
                               self.bound.init(arrays) if self.bound is not None else None)

    def report(self, state: AggregatorState) -> dict[str, float]:
        """What the pipeline's state says about the last round (the privacy spent, the update bound)."""
        out = self.privacy.report(state.privacy) if self.privacy is not None else {}
        if self.bound is not None and state.bound is not None:
            out = {**out, **self.bound.report(state.bound)}
        return out

    def refusal(self, state: AggregatorState, ctx: RoundContext) -> str | None:
        return self.privacy.refusal(state.privacy, ctx) if self.privacy is not None else None

    def start(self, arrays: NamedArrays, state: AggregatorState, ctx: RoundContext) -> RoundAccumulator:
        """A round over ``arrays`` (the group's global arrays, which steps see as ``ctx.arrays``)."""
        return RoundAccumulator(arrays, replace(ctx, arrays=arrays), state, self.combine.init(arrays), 0)

    def prepare(self, round_acc: RoundAccumulator, update: ClientUpdate) -> tuple[ClientUpdate, Any, Any, Any]:
        """Run the per-client steps (validation first), then the privacy clip, then measure the update
        for the bound. Raises ``UpdateRejected`` and changes nothing if a step refuses the update;
        :meth:`fold` then takes what this returns."""
        if self.decode is not None and isinstance(update.delta, Mapping):  # anything else: refused by validation
            update = replace(update, delta=self.decode(update.delta, round_acc.arrays))
        update, pre_state = self.pre.update(update, round_acc.state.pre, round_acc.ctx)
        privacy_state = round_acc.state.privacy
        if self.privacy is not None:
            update, privacy_state = self.privacy.clip(update, privacy_state, round_acc.ctx)
        measured = self.bound.measure(update, round_acc.state.bound) if self.bound is not None else None
        return update, pre_state, privacy_state, measured

    def fold(self, round_acc: RoundAccumulator, prepared: tuple[ClientUpdate, Any, Any, Any]) -> RoundAccumulator:
        update, pre_state, privacy_state, measured = prepared
        state = round_acc.state._replace(pre=pre_state, privacy=privacy_state)
        seen, held, acc = round_acc.seen, round_acc.held, round_acc.acc
        if measured is not None:
            seen = (*seen, measured[0])
            if measured[1]:  # over the provisional bound: it waits for the round's own
                held = (*held, update)
        if measured is None or not measured[1]:
            acc = self.combine.add(acc, update)
        return round_acc._replace(state=state, acc=acc, count=round_acc.count + 1, seen=seen, held=held)

    def precombined(self, round_acc: RoundAccumulator, aggregate: "Aggregate") -> RoundAccumulator:
        """The round's sum, made elsewhere (secure aggregation); :meth:`finish` goes on from it."""
        return round_acc._replace(acc=Precombined(aggregate), count=aggregate.num_clients)

    def add(self, round_acc: RoundAccumulator, update: ClientUpdate) -> RoundAccumulator:
        """Fold one update in. Raises ``UpdateRejected`` (leaving ``round_acc`` usable) if a step refuses it."""
        return self.fold(round_acc, self.prepare(round_acc, update))

    def finish(self, round_acc: RoundAccumulator) -> tuple[NamedArrays, AggregatorState]:
        """The next global arrays and aggregator state. Needs at least one update; raises
        ``UpdateRejected`` rather than return arrays with NaN or inf."""
        if round_acc.count == 0:
            raise ValueError("finish() needs at least one accepted update")
        arrays, state, ctx = round_acc.arrays, round_acc.state, round_acc.ctx
        acc = round_acc.acc
        bound_state = state.bound
        if self.bound is not None and not isinstance(acc, Precombined):
            b, w, bound_state = self.bound.settle(state.bound, round_acc.seen)
            for update in round_acc.held:  # in the order they came: the same bits in every backend
                acc = self.combine.add(acc, self.bound.apply(update, b, w))
            bound_state = self.bound.close(bound_state, b, w, round_acc.seen)
        aggregate = acc.aggregate if isinstance(acc, Precombined) else self.combine.result(acc)
        privacy_state = state.privacy
        if self.privacy is not None:
            aggregate, privacy_state = self.privacy.noise(aggregate, privacy_state, ctx)
        aggregate, post_state = self.post.update(aggregate, state.post, ctx)
        mean = divide(aggregate, arrays)
        step, opt_state = self.server_optimizer.update(mean, state.server_optimizer, ctx)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below, by value
            new = add(arrays, step)
        bad = [name for name, a in new.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
        if bad:  # valid updates can still overflow together: the model must never take NaN or inf
            raise UpdateRejected(f"round {ctx.round}: the combined step makes {bad[:3]} non-finite; the model is kept")
        huge = [name for name, a in new.items() if a.dtype.kind == "f" and a.size and _largest(a) > MAX_MODEL_ABS
                and _largest(a) > _largest(arrays[name])]  # the second pass only for an array already over the line
        if huge:  # no model trains with weights this large: a poisoned sum got through
            raise UpdateRejected(f"round {ctx.round}: the combined step makes {huge[:3]} absurdly large (a value over "
                                 f"{MAX_MODEL_ABS:g}); the model is kept")
        return new, AggregatorState(state.pre, post_state, opt_state, privacy_state, bound_state)

    def aggregate(self, arrays: NamedArrays, state: AggregatorState, updates: Sequence[ClientUpdate], ctx: RoundContext):
        """Batch form of start/add/finish, for tests and scripts."""
        round_acc = self.start(arrays, state, ctx)
        for update in updates:
            round_acc = self.add(round_acc, update)
        return self.finish(round_acc)


def _largest(a: np.ndarray) -> float:
    """The largest absolute value of a float array, without a temporary the array's size."""
    return float(max(np.max(a), -np.min(a)))


def divide(aggregate: Aggregate, like: NamedArrays) -> NamedArrays:
    """``delta_sum / total_weight`` in the dtypes of the global arrays (floats; integers stay float)."""
    if not aggregate.total_weight > 0:
        raise ValueError(f"total weight is {aggregate.total_weight}; expected > 0")
    out = {}
    for name, s in aggregate.delta_sum.items():
        mean = s / aggregate.total_weight
        out[name] = mean.astype(like[name].dtype) if like[name].dtype.kind == "f" else mean
    return out
