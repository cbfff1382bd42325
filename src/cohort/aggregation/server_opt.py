"""Server optimizers: map the mean client delta to the step added to the global arrays.

The mean delta points where the clients moved, so it is a negative pseudo-gradient: SGD adds it.
``sgd(1.0)`` is FedAvg; ``sgd(lr, momentum)`` is FedAvgM (Hsu et al. 2019). ``adaptive`` gives the
adaptive federated optimizers of Reddi et al. 2021 (Algorithm 2), with Δ the mean delta:

    m ← β₁·m + (1 − β₁)·Δ
    v ← v + Δ²                                  (FedAdagrad)
    v ← β₂·v + (1 − β₂)·Δ²                      (FedAdam)
    v ← v − (1 − β₂)·Δ²·sign(v − Δ²)            (FedYogi)
    step = η·m / (√v + τ)

with m₀ = 0 and v₀ = τ², and no bias correction, as in the paper.
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


class AdaptiveState(NamedTuple):
    m: NamedArrays  # first moment of the mean delta
    v: NamedArrays  # second moment


ADAPTIVE = ("adam", "yogi", "adagrad")


def adaptive(kind: str, learning_rate: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> Step:
    """FedAdam, FedYogi or FedAdagrad (``kind`` = "adam", "yogi", "adagrad") with server learning rate
    η = ``learning_rate``, momentum β₁, second-moment decay β₂ (not used by Adagrad) and adaptivity τ."""
    if kind not in ADAPTIVE:
        raise ConfigError(f"server.optimizer is {kind!r}; expected sgd or one of {', '.join(ADAPTIVE)}")
    if not (isinstance(learning_rate, (int, float)) and 0 < learning_rate < math.inf):
        raise ConfigError(f"server.lr is {learning_rate!r}; expected a finite number > 0")
    for name, v in (("server.beta1", beta1), ("server.beta2", beta2)):
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise ConfigError(f"{name} is {v!r}; expected 0 <= β < 1")
    if not (isinstance(tau, (int, float)) and 0 < tau < math.inf):
        raise ConfigError(f"server.tau is {tau!r}; expected a finite number > 0 (the adaptivity; 1e-3 is usual)")

    def init(arrays: NamedArrays) -> AdaptiveState:
        return AdaptiveState({k: np.zeros(a.shape, np.float64) for k, a in arrays.items()},
                             {k: np.full(a.shape, tau * tau, np.float64) for k, a in arrays.items()})

    def update(mean_delta: NamedArrays, state: AdaptiveState, ctx):
        m, v, step = {}, {}, {}
        for k, d in mean_delta.items():
            d = np.asarray(d, np.float64)
            m[k] = beta1 * state.m[k] + (1 - beta1) * d
            sq = d * d
            if kind == "adagrad":
                v[k] = state.v[k] + sq
            elif kind == "adam":
                v[k] = beta2 * state.v[k] + (1 - beta2) * sq
            else:
                v[k] = state.v[k] - (1 - beta2) * sq * np.sign(state.v[k] - sq)
            step[k] = learning_rate * m[k] / (np.sqrt(v[k]) + tau)
        return step, AdaptiveState(m, v)

    return Step(init, update)
