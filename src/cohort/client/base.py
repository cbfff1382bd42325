"""The Client protocol: what user code implements, the same in simulation and deployment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from cohort.core.arrays import NamedArrays
from cohort.core.types import Config, EvaluateResult, FitResult


@runtime_checkable
class Client(Protocol):
    """A party holding data. The server never sees the data, only what these methods return.

    ``config`` is the per-round config sent by the server; it always holds ``round`` (1-based) and
    ``seed`` (the run seed), from which a client derives its random streams.
    """

    def fit(self, arrays: NamedArrays, config: Config) -> FitResult:
        """Train from ``arrays``; return the delta (trained minus received), examples used, metrics."""
        ...

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        """Evaluate ``arrays`` on held-out data; return mean loss, examples used, metrics."""
        ...


ClientFn = Callable[[int], Client]
"""Builds the client of a client id. In simulation it is called only for sampled clients, so it must be
cheap and must not keep per-client state; it must pickle for the process-pool backend."""
