"""Values that travel between clients, channels and the server. Frozen: nothing edits a reply in place.

A message carries **named groups of named arrays** both ways: ``{"model": {...}, "control": {...}}``.
Which groups go down and come back is the algorithm's to declare; the task set is open ("fit",
"evaluate", and whatever an algorithm or protocol adds).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cohort.core.arrays import NamedArrays

Metrics = Mapping[str, float]
Config = Mapping[str, Any]
Groups = Mapping[str, NamedArrays]  # {group name: named arrays}; "model" is the global model

MODEL = "model"  # the group every algorithm has: the global model's arrays


@dataclass(frozen=True, slots=True)
class Message:
    """What one client receives for one task: the broadcast groups (read-only), its config, and the
    model version the groups belong to."""

    task: str  # "fit", "evaluate", or a task an algorithm adds
    arrays: Groups
    config: Config
    version: int = 0  # model version of ``arrays`` (a reply says which version it was computed from)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a client sends back for a fit-like task: groups of deltas (one sign everywhere:
    ``new = old + delta``), its example count (the default aggregation weight) and metrics."""

    arrays: Groups
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    version: int = 0  # the model version the reply was computed from (set by the client runtime)
    seconds: float = 0.0  # the client's own time on the task (set by the client runtime)
    # control facts for the client's own accounting (DP-SGD's steps and sampling rate, local DP's
    # multiplier): a record of their own, read and dropped by the client runtime; never sent, never a metric
    facts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FitResult:
    """What a plain ``Client.fit`` returns: the model delta (trained minus received arrays), the
    examples trained on and metrics. The algorithm's client half turns it into a :class:`Reply`."""

    delta: NamedArrays
    num_examples: int  # examples trained on: the default aggregation weight
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvaluateResult:
    """What ``evaluate`` returns: mean loss over ``num_examples`` held-out examples."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    seconds: float = 0.0  # the client's own time on the task (set by the client runtime)


class FailureStage(str, enum.Enum):
    """Where a client's part of a round went wrong."""

    FIT = "fit"  # the client's code raised or returned the wrong type
    EVALUATE = "evaluate"
    TASK = "task"  # another task of an algorithm or protocol
    VALIDATE = "validate"  # the reply was refused before it touched the model
    TIMEOUT = "timeout"  # no reply before the deadline
    TRANSPORT = "transport"  # the reply was lost on the way (dead worker, lost connection)
    REFUSED = "refused"  # the site's policy refused the task: nothing was computed (cohort.governance.policy)

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of_task(cls, task: str) -> "FailureStage":
        return {"fit": cls.FIT, "evaluate": cls.EVALUATE}.get(task.rpartition(":")[2], cls.TASK)  # secagg:fit is a fit


@dataclass(frozen=True, slots=True)
class ClientFailure:
    """A client that did not deliver: a value beside the replies, never an exception through the loop."""

    client_id: int
    stage: FailureStage
    reason: str


@dataclass(frozen=True, slots=True)
class Instruction:
    """One client's part of a task: its id and the config it receives (arrays are shared by the cohort)."""

    client_id: int
    config: Config


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """One group of a reply as an aggregation step sees it: the delta with its aggregation weight."""

    client_id: int
    delta: NamedArrays
    weight: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    version: int = 0  # model version the delta was computed from; staleness = ctx.version - version


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What a step may know about the round (or server step) it runs in."""

    round: int
    seed: int
    cohort_size: int  # clients whose replies this aggregation expects
    num_clients: int = 0  # clients in the federation (the population sampled from)
    version: int = 0  # the model version being updated
    arrays: NamedArrays = field(default_factory=dict)  # this group's global arrays (read-only)
    population: int = 0  # the clients this round's cohort was sampled from (0: all num_clients)

    @property
    def sampling_rate(self) -> float:
        """q: the share of the clients sampled into this round."""
        pool = self.population or self.num_clients
        return min(1.0, self.cohort_size / pool) if pool > 0 else 1.0
