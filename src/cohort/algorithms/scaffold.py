"""SCAFFOLD (Karimireddy et al. 2020), with option II control variates.

The server keeps a control variate ``c`` beside the model, each client its own ``cᵢ`` (in its
per-client state). Local steps are corrected by ``c − cᵢ``, which removes the client drift that makes
FedAvg settle at a biased point on heterogeneous data. After ``K`` local steps of size ``η``:

    cᵢ⁺ = cᵢ − c + (x − yᵢ) / (K·η)         (option II)
    up:   Δy = yᵢ − x,  Δc = cᵢ⁺ − cᵢ
    server: x ← x + η_g · mean(Δy),  c ← c + Σ Δc / N

Control variates are kept for the model's floating-point entries; the trainer applies the
correction to parameters (buffers such as batch-norm statistics are not trained by gradients).
Option II assumes plain SGD steps of size η: the config refuses local momentum and Adam with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohort.aggregation.compose import process
from cohort.aggregation.server_opt import sgd
from cohort.aggregation.weighting import divide_by_population, uniform_weights
from cohort.algorithms.base import Needs, Algorithm, ClientHalf, ClientState
from cohort.algorithms.fedavg import model_pipeline
from cohort.client.base import Hooks, Trainer
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError
from cohort.core.types import MODEL, Groups, Message, Reply

CONTROL = "control"


@dataclass(frozen=True)
class ScaffoldSettings:
    """``[scaffold]``: SCAFFOLD has no settings of its own beyond the server's (lr, momentum)."""


def control_variates(model: NamedArrays) -> NamedArrays:
    """Zero control variates for the floating-point entries of ``model``."""
    return {k: np.zeros(a.shape, a.dtype) for k, a in model.items() if a.dtype.kind == "f"}


class ControlledSteps(ClientHalf):
    """Local steps corrected by ``c − cᵢ``; ``cᵢ`` lives in the client's state."""

    requires = ("train",)

    def fit(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply, ClientState]:
        x, c = message.arrays[MODEL], message.arrays[CONTROL]
        c_i = (state or {}).get(CONTROL) or {k: np.zeros_like(v) for k, v in c.items()}
        offset = {k: c[k] - c_i[k] for k in c}
        t = trainer.train(x, message.config, Hooks(gradient_offset=offset))
        if t.num_steps < 1 or not t.lr > 0:
            raise ConfigError(f"SCAFFOLD needs the local step count and learning rate; the trainer reported "
                              f"{t.num_steps} steps at lr {t.lr}")
        scale = 1.0 / (t.num_steps * t.lr)
        # cᵢ⁺ = cᵢ − c + (x − yᵢ)/(Kη), and x − yᵢ = −delta; computed in float64, kept in c's dtype
        c_new = {k: (c_i[k].astype(np.float64) - c[k] - scale * t.delta[k]).astype(c[k].dtype) for k in c}
        if not all(np.isfinite(v).all() for v in c_new.values()):  # never keep a broken cᵢ: it would exclude the client for good
            raise FloatingPointError("SCAFFOLD's new control variate is not finite (the local training diverged); "
                                     "the client keeps its previous one")
        dc = {k: c_new[k] - c_i[k] for k in c}
        return Reply({MODEL: t.delta, CONTROL: dc}, t.num_examples, t.metrics, facts=t.facts), {**(state or {}), CONTROL: c_new}


def _groups(model: NamedArrays) -> Groups:
    return {MODEL: model, CONTROL: control_variates(model)}


def scaffold(server_lr: float = 1.0, server_momentum: float = 0.0, weighted: bool = True) -> Algorithm:
    control = process(pre=[uniform_weights()], post=[divide_by_population()], server_optimizer=sgd(1.0))
    return Algorithm("scaffold", ControlledSteps(),
                     {MODEL: model_pipeline(server_lr, server_momentum, weighted), CONTROL: control}, groups=_groups,
                     needs=Needs(plain_sgd=True))
