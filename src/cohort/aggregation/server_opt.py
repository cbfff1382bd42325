"""Server optimizers: map the mean client delta to the step added to the global arrays.

The mean delta points where the clients moved, so it is a negative pseudo-gradient: SGD adds it.
``sgd(1.0)`` is FedAvg; ``sgd(lr, momentum)`` is FedAvgM (Hsu et al. 2019).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from cohort.aggregation.pipeline import Step
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError


class SgdState(NamedTuple):
    velocity: NamedArrays  # momentum buffer; empty without momentum


def sgd(learning_rate: float = 1.0, momentum: float = 0.0) -> Step:
    """``step = lr · v`` with ``v = momentum · v + mean_delta`` (``v = mean_delta`` without momentum)."""
    if not (isinstance(learning_rate, (int, float)) and 0 < learning_rate < math.inf):
        raise ConfigError(f"server.lr is {learning_rate!r}; expected a finite number > 0")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ConfigError(f"server.momentum is {momentum!r}; expected 0 <= momentum < 1")

    def init(arrays: NamedArrays) -> SgdState:
        if momentum == 0:
            return SgdState({})
        return SgdState({name: np.zeros(a.shape, a.dtype if a.dtype.kind == "f" else np.float64) for name, a in arrays.items()})

    def update(mean_delta: NamedArrays, state: SgdState, ctx):
        if momentum:
            velocity = {name: momentum * state.velocity[name] + d for name, d in mean_delta.items()}
            return {name: learning_rate * v for name, v in velocity.items()}, SgdState(velocity)
        if learning_rate == 1.0:
            return mean_delta, state
        return {name: learning_rate * d for name, d in mean_delta.items()}, state

    return Step(init, update)
