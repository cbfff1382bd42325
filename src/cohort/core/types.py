"""Values that travel between clients, channels and the server. Frozen: nothing edits a reply in place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cohort.core.arrays import NamedArrays

Metrics = Mapping[str, float]
Config = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FitResult:
    """What ``Client.fit`` returns.

    ``delta`` is the client's arrays after training minus the arrays it received (one sign everywhere:
    ``new = old + delta``). In FedSGD the delta is the negative gradient, the step plain SGD with
    learning rate 1 would take.
    """

    delta: NamedArrays
    num_examples: int  # examples trained on: the default aggregation weight
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvaluateResult:
    """What ``Client.evaluate`` returns: mean loss over ``num_examples`` held-out examples."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientFailure:
    """A client that did not deliver: a value beside the replies, never an exception through the loop."""

    client_id: int
    stage: str  # "fit", "evaluate", "validate", "timeout", "transport"
    reason: str


@dataclass(frozen=True, slots=True)
class Instruction:
    """One client's part of a round: its id and the config it receives (arrays are shared by the cohort)."""

    client_id: int
    config: Config


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """A reply as the aggregation sees it: the delta with its aggregation weight."""

    client_id: int
    delta: NamedArrays
    weight: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What a step may know about the round it runs in."""

    round: int
    seed: int
    cohort_size: int
