"""FedSGD (McMahan et al. 2017): each client returns the gradient of its loss over all of its data;
the server averages the gradients and takes one step with its learning rate.

The gradient travels as a delta like any update, with the sign of a step: ``delta = -gradient``; so
the server step ``lr · mean(delta)`` is exactly ``-lr · mean(gradient)``, and FedSGD is FedAvg's
aggregation with the clients in gradient mode.
"""

from __future__ import annotations

from dataclasses import replace

from cohort.algorithms.base import Algorithm
from cohort.algorithms.fedavg import fedavg


def fedsgd(server_lr: float = 0.1, server_momentum: float = 0.0, weighted: bool = True) -> Algorithm:
    return replace(fedavg(server_lr, server_momentum, weighted), name="fedsgd", client_config={"mode": "gradient"})
