"""Server optimizers: map the mean client delta to the step added to the global arrays.

The mean delta points where the clients moved, so it is a negative pseudo-gradient: SGD adds it.
``sgd(1.0)`` is FedAvg; ``sgd(lr, momentum)`` is FedAvgM (Hsu et al. 2019).
"""

from __future__ import annotations

import math

import numpy as np

from cohort.aggregation.pipeline import Step
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError


def sgd(learning_rate: float = 1.0, momentum: float = 0.0) -> Step:
    """``step = lr · v`` with ``v = momentum · v + mean_delta`` (``v = mean_delta`` without momentum)."""
    if not 0 < learning_rate < math.inf:
        raise ConfigError(f"server learning_rate is {learning_rate}; expected a finite number > 0")
    if not 0 <= momentum < 1:
        raise ConfigError(f"server momentum is {momentum}; expected 0 <= momentum < 1")

    def init(arrays: NamedArrays):
        return () if momentum == 0 else {name: np.zeros(a.shape, a.dtype if a.dtype.kind == "f" else np.float64) for name, a in arrays.items()}

    def update(mean_delta: NamedArrays, velocity, ctx):
        if momentum:
            velocity = {name: momentum * velocity[name] + d for name, d in mean_delta.items()}
            return {name: learning_rate * v for name, v in velocity.items()}, velocity
        if learning_rate == 1.0:
            return mean_delta, velocity
        return {name: learning_rate * d for name, d in mean_delta.items()}, velocity

    return Step(init, update)
