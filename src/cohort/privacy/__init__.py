"""Differential privacy: central DP-FedAvg with an accountant (``central.py``, ``accountant.py``)."""

from __future__ import annotations

from dataclasses import replace

from cohort.aggregation.pipeline import Mechanism
from cohort.core.errors import ConfigError
from cohort.core.types import MODEL
from cohort.privacy.accountant import epsilon
from cohort.privacy.central import DpState, central_dp


def with_privacy(algorithm, mechanism: Mechanism):
    """``algorithm`` (a :class:`cohort.algorithms.Algorithm`) with ``mechanism`` on its model pipeline.
    Algorithms that send other groups back (SCAFFOLD's control variates) are refused: those would
    leave the clients unprotected. As ``with_secure_aggregation``, it reads the algorithm by its
    fields, so privacy sits below the algorithms and the clients (local DP's accountant)."""
    if not isinstance(mechanism, Mechanism):
        raise ConfigError(f"mechanism is a {type(mechanism).__name__}; expected a cohort.privacy mechanism, "
                          "e.g. central_dp(noise_multiplier=1.0, clip=1.0)")
    others = sorted(g for g in algorithm.aggregators if g != MODEL)
    if others:
        raise ConfigError(f"central differential privacy covers the {MODEL!r} group; {algorithm.name} also sends "
                          f"{others} back, which would not be protected. Use fedavg, fedprox or fedsgd")
    if algorithm.aggregators[MODEL].combine.kind != "sum":
        raise ConfigError("central differential privacy noises a sum of clipped updates; a robust combine (median, "
                          "trimmed mean, Krum) has another sensitivity: use server.aggregator = 'mean' with DP, and "
                          "server.norm_bound if you want updates bounded")
    return replace(algorithm, aggregators={MODEL: replace(algorithm.aggregators[MODEL], privacy=mechanism)})


__all__ = ["DpState", "central_dp", "epsilon", "with_privacy"]
