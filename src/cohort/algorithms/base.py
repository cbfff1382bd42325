"""An algorithm is one object with two halves (FedJAX's ``FederatedAlgorithm`` is the model).

- The **client half** (:class:`ClientHalf`) says what a client does with a message: which local
  training (plain steps, a proximal term, a gradient correction, a full gradient), which groups go
  back, and what it keeps in its per-client state. It runs wherever the client runs (in this
  process, in a worker, in a client process), so it is a small picklable object.
- The **server half** is one aggregation pipeline per group the clients send back (validation,
  per-client steps, combine, global steps, server optimizer), and the groups that go down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cohort.aggregation.pipeline import Aggregator, AggregatorState, Combine, RoundAccumulator, Step, chain
from cohort.client.base import Trainer
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.types import MODEL, ClientUpdate, EvaluateResult, Groups, Message, Reply, RoundContext

ClientState = Groups | None  # what one client keeps between its rounds (None before its first)


@dataclass(frozen=True)
class Needs:
    """What an algorithm asks of a run, declared by the algorithm and checked before round 1, so that no
    check elsewhere tests an algorithm's name."""

    plain_sgd: bool = False  # its local steps must be plain SGD without momentum (SCAFFOLD: c from (x − y)/(K·lr))
    partial_model: str = ""  # what the server's model lacks, when clients keep part of it ("": nothing); then the
    # server has no whole model to evaluate on its own, and the saved model says so
    personal: bool = False  # its clients keep a model of their own and report personal_* metrics


class ClientHalf:
    """What a client does with each task. Subclasses define ``fit`` (and may add tasks)."""

    tasks: tuple[str, ...] = ("fit", "evaluate")
    requires: tuple[str, ...] = ()  # trainer methods a client must have beyond fit/evaluate ("train", "gradient")
    plain_steps: bool = False  # its fit is plain local steps and nothing else (what DP-SGD's accounting covers)

    def handle(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply | EvaluateResult, ClientState]:
        """Answer one of this algorithm's own tasks. The client runtime reaches it through the task
        registry (:mod:`cohort.core.tasks`), where protocols and other components answer theirs."""
        if message.task not in self.tasks:
            raise ConfigError(f"task {message.task!r} is not one of this algorithm's: {', '.join(self.tasks)}")
        return getattr(self, message.task)(message, trainer, state)

    def fit(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply, ClientState]:
        raise NotImplementedError

    def evaluate(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[EvaluateResult, ClientState]:
        return trainer.evaluate(message.arrays[MODEL], message.config), state


def _model_only(model: NamedArrays) -> Groups:
    return {MODEL: model}


def _model_group(groups: Groups) -> NamedArrays:
    return groups[MODEL]


@dataclass(frozen=True)
class Algorithm:
    """Both halves of an algorithm. Build one with a factory (``fedavg()``, ``scaffold()``, ...)."""

    name: str
    client: ClientHalf
    aggregators: Mapping[str, Aggregator]  # one pipeline per group the clients send back
    groups: Callable[[NamedArrays], Groups] = _model_only  # the global groups, from the initial model
    whole: Callable[[Groups], NamedArrays] = _model_group  # the inverse: a model with every array ``groups`` split off
    config: Mapping[str, Any] = field(default_factory=dict)  # sent to every client, every round
    # the round protocol composed in (cohort.secagg.rounds.SecureRounds: the server learns only each round's sum):
    # it turns a synchronous round's cohort, and federated evaluation, into what reaches the pipelines; None:
    # every reply is folded on its own. It has name, records_clients, check(size), fit(...) and evaluate(...).
    rounds: Any = None
    needs: Needs = field(default_factory=Needs)  # what it asks of a run (checked by the experiment before round 1)

    def __post_init__(self) -> None:
        if MODEL not in self.aggregators:
            raise ConfigError(f"algorithm {self.name!r} has no pipeline for the {MODEL!r} group")

    def init(self, model: NamedArrays) -> tuple[Groups, dict[str, AggregatorState]]:
        """The global groups and every pipeline's state before the first round."""
        groups = self.groups(model)
        missing = [g for g in self.aggregators if g not in groups]
        if missing:
            raise ConfigError(f"algorithm {self.name!r} aggregates groups {missing} that it does not create")
        return groups, {g: agg.init(groups[g]) for g, agg in self.aggregators.items()}

    def start(self, groups: Groups, steps: Mapping[str, AggregatorState], ctx: RoundContext) -> dict[str, RoundAccumulator]:
        return {g: agg.start(groups[g], steps[g], ctx) for g, agg in self.aggregators.items()}

    def add(self, accs: dict[str, RoundAccumulator], client_id: int, reply: Reply) -> dict[str, RoundAccumulator]:
        """Fold every group of ``reply`` in, or none: raises UpdateRejected (``accs`` unchanged) if any
        group is missing, unexpected or refused by a step."""
        arrays = reply.arrays
        if not isinstance(arrays, Mapping) or set(arrays) != set(self.aggregators):
            got = sorted(arrays) if isinstance(arrays, Mapping) else type(arrays).__name__
            raise UpdateRejected(f"reply of client {client_id} has groups {got}; {self.name} expects "
                                 f"{sorted(self.aggregators)}")
        prepared = {}
        for g, agg in self.aggregators.items():
            update = ClientUpdate(client_id, arrays[g], reply.num_examples, reply.num_examples, reply.metrics, reply.version)
            try:
                prepared[g] = agg.prepare(accs[g], update)
            except UpdateRejected as e:
                raise UpdateRejected(f"{e} (group {g!r})" if g != MODEL else str(e)) from e
        return {g: self.aggregators[g].fold(accs[g], prepared[g]) for g in self.aggregators}

    def check_cohort(self, size: int) -> None:
        """Raise ConfigError if rounds of ``size`` updates cannot work with the combines (Krum's n >= 2f + 3)."""
        for agg in self.aggregators.values():
            agg.combine.check(size)

    def with_model_pipeline(self, combine: Combine | None = None, pre: tuple[Step, ...] = (),
                            server_optimizer: Step | None = None, decode=None) -> "Algorithm":
        """This algorithm with the model group's combine replaced (a robust one), ``pre`` steps added
        after its own (norm bounding), its server optimizer replaced (FedAdam, ...), or its updates
        decoded before validation (``decode``: a compression's, which the clients learn from ``config``)."""
        agg = self.aggregators[MODEL]
        agg = replace(agg, combine=combine if combine is not None else agg.combine,
                      pre=chain(agg.pre, *pre) if pre else agg.pre,
                      server_optimizer=server_optimizer if server_optimizer is not None else agg.server_optimizer,
                      decode=decode if decode is not None else agg.decode)
        return replace(self, aggregators={**self.aggregators, MODEL: agg})

    def with_bound(self, bound) -> "Algorithm":
        """This algorithm with ``bound`` (:func:`cohort.aggregation.bound.adaptive_bound`) on every group
        the clients send back: no update is folded beyond what the recent ones look like."""
        return replace(self, aggregators={g: replace(agg, bound=bound) for g, agg in self.aggregators.items()})

    @property
    def bounded(self) -> bool:
        """An update bound is on every group's pipeline."""
        return all(agg.bound is not None for agg in self.aggregators.values())

    @property
    def private(self) -> bool:
        """A privacy mechanism is on some group's pipeline (central DP)."""
        return any(agg.privacy is not None for agg in self.aggregators.values())

    def report(self, steps: Mapping[str, AggregatorState]) -> dict[str, float]:
        """What the pipelines' states say about the last round (ε spent, the clip), for its record."""
        out: dict[str, float] = {}
        for g, agg in self.aggregators.items():  # the model's figures as they are, other groups' prefixed
            out.update({k if g == MODEL else f"{g}_{k}": v for k, v in agg.report(steps[g]).items()})
        return out

    def refusal(self, steps: Mapping[str, AggregatorState], ctx: RoundContext) -> str | None:
        """Why one more round (``ctx``: its cohort and population) may not run (a privacy budget), or None."""
        for g, agg in self.aggregators.items():
            why = agg.refusal(steps[g], ctx)
            if why:
                return why
        return None

    def finish(self, accs: dict[str, RoundAccumulator], groups: Groups, steps: Mapping[str, AggregatorState]
               ) -> tuple[Groups, dict[str, AggregatorState]]:
        """The next global groups and pipeline states; all groups or, if one would turn non-finite, none."""
        new_groups, new_steps = dict(groups), dict(steps)
        for g, agg in self.aggregators.items():
            new_groups[g], new_steps[g] = agg.finish(accs[g])
        return new_groups, new_steps
