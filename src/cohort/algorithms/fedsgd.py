"""FedSGD (McMahan et al. 2017): each client returns the gradient of its loss over all of its data;
the server averages the gradients and takes one step with its learning rate.

The gradient travels as a delta like any update, with the sign of a step: ``delta = -gradient``; so
the server step ``lr · mean(delta)`` is exactly ``-lr · mean(gradient)``, and FedSGD is FedAvg's
aggregation with a client half that computes one full gradient instead of training.
"""

from __future__ import annotations

from cohort.algorithms.base import Algorithm, ClientHalf, ClientState
from cohort.algorithms.fedavg import model_pipeline
from cohort.client.base import Trainer
from cohort.core.types import MODEL, Message, Reply


class FullGradient(ClientHalf):
    requires = ("gradient",)

    def fit(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply, ClientState]:
        t = trainer.gradient(message.arrays[MODEL], message.config)
        return Reply({MODEL: {k: -g for k, g in t.delta.items()}}, t.num_examples, t.metrics, facts=t.facts), state


def fedsgd(server_lr: float = 0.1, server_momentum: float = 0.0, weighted: bool = True) -> Algorithm:
    return Algorithm("fedsgd", FullGradient(), {MODEL: model_pipeline(server_lr, server_momentum, weighted)})
