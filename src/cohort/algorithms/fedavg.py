"""FedAvg (McMahan et al. 2017): clients train locally, the server averages their deltas."""

from __future__ import annotations

from collections.abc import Sequence

from cohort.aggregation.compose import process
from cohort.aggregation.pipeline import Step
from cohort.aggregation.server_opt import sgd
from cohort.aggregation.weighting import uniform_weights
from cohort.algorithms.base import Algorithm, ClientHalf, ClientState
from cohort.client.base import Hooks, Trainer
from cohort.core.types import MODEL, Message, Reply


class LocalSteps(ClientHalf):
    """Plain local training from the received model; the model delta goes back."""

    plain_steps = True

    def fit(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply, ClientState]:
        t = trainer.train(message.arrays[MODEL], message.config, Hooks())
        return Reply({MODEL: t.delta}, t.num_examples, t.metrics, facts=t.facts), state


def model_pipeline(server_lr: float, server_momentum: float, weighted: bool, pre: Sequence[Step] = ()):
    """The model group's pipeline shared by the FedAvg family: weights, then server SGD(M)."""
    return process(pre=[*([] if weighted else [uniform_weights()]), *pre], server_optimizer=sgd(server_lr, server_momentum))


def fedavg(server_lr: float = 1.0, server_momentum: float = 0.0, weighted: bool = True) -> Algorithm:
    """Mean of the client deltas, weighted by example count (``weighted=False``: every client counts
    once), applied with server SGD. ``server_lr=1`` without momentum is McMahan's FedAvg: the new
    global model is the weighted mean of the client models."""
    return Algorithm("fedavg", LocalSteps(), {MODEL: model_pipeline(server_lr, server_momentum, weighted)})
