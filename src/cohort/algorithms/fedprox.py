"""FedProx (Li et al. 2020): local training with a proximal term μ/2·‖w − w_global‖², which keeps a
client from drifting far from the model it received; the server half is FedAvg's."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cohort.algorithms.base import Algorithm, ClientHalf, ClientState
from cohort.algorithms.fedavg import model_pipeline
from cohort.client.base import Hooks, Trainer
from cohort.core.errors import ConfigError
from cohort.core.types import MODEL, Message, Reply


@dataclass(frozen=True)
class FedProxSettings:
    """``[fedprox]``"""

    mu: float = 0.01  # μ: strength of the proximal term (0 is FedAvg)

    def __post_init__(self) -> None:
        if not (isinstance(self.mu, (int, float)) and not isinstance(self.mu, bool) and 0 <= self.mu < math.inf):
            raise ConfigError(f"fedprox.mu is {self.mu!r}; expected a finite number >= 0")


@dataclass(frozen=True)
class ProximalSteps(ClientHalf):
    mu: float

    requires = ("train",)

    def fit(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply, ClientState]:
        t = trainer.train(message.arrays[MODEL], message.config, Hooks(proximal_mu=self.mu))
        return Reply({MODEL: t.delta}, t.num_examples, t.metrics, facts=t.facts), state


def fedprox(mu: float = 0.01, server_lr: float = 1.0, server_momentum: float = 0.0, weighted: bool = True) -> Algorithm:
    settings = FedProxSettings(mu)
    return Algorithm("fedprox", ProximalSteps(settings.mu), {MODEL: model_pipeline(server_lr, server_momentum, weighted)})
