"""What every round policy's step is made of: the clients' speeds on the virtual clock, the step's
context and outcome, folding replies into the round's accumulators, and the server step; and FedBuff's
work in flight and state, which its simulated step (``policies.py``) and its live one (``live.py``)
share. The policies build on this module; it knows none of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from cohort.algorithms.base import Algorithm
from cohort.channel.base import Channel
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.seeding import Stage, rng
from cohort.core.types import ClientFailure, FailureStage, Groups, Reply
from cohort.server.records import WeightedMean, client_row
from cohort.server.state import ServerState


class ClientSpeeds:
    """The virtual clock's client speeds: client ``c`` needs ``1 / speed_c`` simulated seconds per
    task, with ``speed_c = spread ** u_c`` and ``u_c`` uniform in [0, 1), seeded per client (so the
    fastest is at most ``spread`` times the slowest). ``spread = 1``: every client takes 1 s."""

    def __init__(self, seed: int, spread: float = 1.0, network=None, model_bytes: int = 0) -> None:
        if not (isinstance(spread, (int, float)) and not isinstance(spread, bool) and 1 <= spread < math.inf):
            raise ConfigError(f"simulation.speed_spread is {spread!r}; expected a finite number >= 1")
        self.seed, self.spread = seed, float(spread)
        self.network, self.model_bytes = network, model_bytes  # a NetworkModel adds each task's transfer time

    def compute(self, client_id: int) -> float:
        if self.spread == 1.0:
            return 1.0
        return float(self.spread ** -rng(self.seed, 0, Stage.SPEED, client_id).random())

    def transfer(self, client_id: int) -> float:
        """Seconds on the network for one task: the model down and an update of the same size up."""
        return self.network.transfer_s(client_id, self.model_bytes, self.model_bytes) if self.network else 0.0

    def duration(self, client_id: int) -> float:
        return self.compute(client_id) + self.transfer(client_id)


@dataclass
class StepContext:
    """What a policy needs to run a step (one per run)."""

    algorithm: Algorithm
    channel: Channel
    num_clients: int
    speeds: ClientSpeeds
    min_successful_clients: int
    timeout_s: float | None
    # work a policy has out on a live channel, by task id (FedBuff over gRPC; see server/live.py):
    # it belongs to this run, not to the policy object, which a user may reuse for another run
    in_flight: dict[int, Any] = field(default_factory=dict)
    snapshots: dict[int, Any] = field(default_factory=dict)  # live: the groups each version in flight was sent
    rows: list[dict[str, Any]] = field(default_factory=list)  # this step's accepted updates, one row each (clients.jsonl)
    aggregate_s: float = 0.0  # this step's seconds in the server's own work: validating, folding, the server step
    task_config: Callable[[str, int], Any] | None = None  # (task, round) -> what an app adds to its messages' config
    metrics: Callable[[str], Any] | None = None  # task -> a fresh aggregation of the clients' metrics

    def records(self, task: str, r: int) -> dict[str, Any]:
        """What the run's app adds to the config of ``task``'s messages in round ``r`` ({} without an app)."""
        return dict(self.task_config(task, r)) if self.task_config is not None else {}

    def mean(self, task: str):
        """A fresh aggregation of the clients' ``task`` metrics: the app's own, else the example-weighted mean."""
        return self.metrics(task) if self.metrics is not None else WeightedMean()


@dataclass(frozen=True)
class StepOutcome:
    """One step's result, before the loop adds evaluation and traffic."""

    state: ServerState  # with round, groups, steps, version, clock and policy state advanced
    stands: bool
    record: dict[str, Any]
    failures: list[ClientFailure]


def fold_replies(ctx: StepContext, accs, replies, failures: list[ClientFailure], fit_metrics: WeightedMean,
                 on_reply: Callable[[int, Reply], None] | None = None, enough: int | None = None):
    """Fold ``(client_id, outcome)`` pairs into ``accs``; refused or failed ones become failures.
    With ``enough``, stop taking replies once that many were accepted."""
    count = 0
    for cid, outcome in replies:
        if isinstance(outcome, ClientFailure):
            failures.append(outcome)
            continue
        started = time.perf_counter()
        try:
            accs = ctx.algorithm.add(accs, cid, outcome)
        except UpdateRejected as e:
            failures.append(ClientFailure(cid, FailureStage.VALIDATE, str(e)))
            continue
        finally:
            ctx.aggregate_s += time.perf_counter() - started
        count += 1
        fit_metrics.add(outcome.metrics, outcome.num_examples)
        ctx.rows.append(client_row("fit", cid, outcome))
        if on_reply is not None:
            on_reply(cid, outcome)
        if enough is not None and count >= enough:
            break
    return accs, count


def finish_step(ctx: StepContext, state: ServerState, accs, count: int) -> tuple[ServerState, bool, str | None]:
    """Apply the server step if enough updates stood; the state then has a new model version."""
    if count >= ctx.min_successful_clients:
        started = time.perf_counter()
        try:
            groups, steps = ctx.algorithm.finish(accs, state.groups, state.steps)
        except UpdateRejected as e:
            return replace(state, failed_rounds=state.failed_rounds + 1), False, str(e)
        finally:
            ctx.aggregate_s += time.perf_counter() - started
        return replace(state, groups=groups, steps=steps, version=state.version + 1, failed_rounds=0), True, None
    return replace(state, failed_rounds=state.failed_rounds + 1), False, None


class InFlight(NamedTuple):
    """One client's task under an asynchronous policy."""

    finish: float  # virtual time it arrives
    seq: int  # dispatch number (its config's "round"; breaks ties in arrival order)
    client_id: int
    version: int  # model version it trains on
    reply: Reply | None = None  # computed outcome (None: not yet computed)
    failure: ClientFailure | None = None


class FedBuffState(NamedTuple):
    dispatched: int  # dispatches so far
    in_flight: tuple[InFlight, ...]  # sorted by (finish, seq)
    snapshots: dict[int, Groups]  # global groups of older versions that work in flight was started on
