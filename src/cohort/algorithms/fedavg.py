"""FedAvg (McMahan et al. 2017): clients train locally, the server averages their deltas."""

from __future__ import annotations

from cohort.aggregation.pipeline import process
from cohort.aggregation.server_opt import sgd
from cohort.aggregation.weighting import uniform_weights
from cohort.algorithms.base import Algorithm


def fedavg(server_lr: float = 1.0, server_momentum: float = 0.0, weighted: bool = True) -> Algorithm:
    """Mean of the client deltas, weighted by example count (``weighted=False``: every client counts
    once), applied with server SGD. ``server_lr=1`` without momentum is McMahan's FedAvg: the new
    global model is the weighted mean of the client models."""
    aggregator = process(pre=[] if weighted else [uniform_weights()], server_optimizer=sgd(server_lr, server_momentum))
    return Algorithm("fedavg", aggregator, {"mode": "train"})
