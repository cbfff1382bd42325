"""FedAsync (Xie et al. 2019): every arrival is mixed into the model at once.

    x_t = (1 − α_t)·x_{t−1} + α_t·x_new,    α_t = α·s(t − τ)

``x_new`` is the client's model, trained from the version ``x_τ`` it was sent. ``s`` is a staleness
function (constant, polynomial or hinge, :func:`cohort.aggregation.staleness_function`). It is FedBuff's
machinery with one arrival per server step (``concurrency`` clients in flight, the same virtual clock in
simulation and real arrival order over gRPC); what differs is how an arrival becomes the step: its
delta, taken against the current model, is ``α_t·(x_τ + Δ − x_{t−1})``, so the pipeline's mean (of one)
and server SGD with lr 1 give exactly the mix above. Its state is FedBuff's (``FedBuffState``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cohort.aggregation.weighting import staleness_function
from cohort.core.arrays import check_like, spec_of
from cohort.core.errors import ConfigError, UpdateRejected, check
from cohort.core.types import ClientFailure, FailureStage, Groups, Reply, RoundContext
from cohort.server.policies import FedBuff
from cohort.server.step import InFlight


@dataclass(frozen=True)
class FedAsyncSettings:
    """``[fedasync]``: every arrival mixed into the model at once (server.policy = "fedasync")."""

    alpha: float = 0.6  # α: the mixing weight of a fresh update
    concurrency: int = 20  # clients training at once
    staleness: str = "polynomial"  # constant | polynomial | hinge
    staleness_a: float = 0.5  # a of the polynomial (t − τ + 1)^-a, or of the hinge 1 / (a (t − τ − b) + 1)
    hinge_b: int = 4  # hinge: versions of staleness still at full weight

    def __post_init__(self) -> None:
        check(0 < self.alpha <= 1, "fedasync.alpha", self.alpha, "0 < α <= 1")
        check(1 <= self.concurrency <= 1_000_000, "fedasync.concurrency", self.concurrency, "an integer from 1 to 1000000")
        check(self.staleness in ("constant", "polynomial", "hinge"), "fedasync.staleness", self.staleness,
               "one of constant, polynomial, hinge")
        check(0 <= self.staleness_a < math.inf, "fedasync.staleness_a", self.staleness_a, "a finite number >= 0")
        check(self.hinge_b >= 0, "fedasync.hinge_b", self.hinge_b, "an integer >= 0")

    def policy(self) -> "FedAsync":
        return FedAsync(self.alpha, self.concurrency, self.staleness, self.staleness_a, self.hinge_b)


class FedAsync(FedBuff):
    name = "fedasync"

    def __init__(self, alpha: float = 0.6, concurrency: int = 20, staleness: str = "polynomial", a: float = 0.5,
                 hinge_b: int = 4) -> None:
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha <= 1):
            raise ConfigError(f"fedasync.alpha is {alpha!r}; expected 0 < α <= 1 (the mixing weight of a fresh update)")
        super().__init__(1, concurrency, a, staleness, hinge_b)
        self.alpha = float(alpha)
        self.weigh = staleness_function(staleness, a, hinge_b)

    def _stale(self, work: InFlight, rctx: RoundContext, started_on: Groups | None = None,
               current: Groups | None = None) -> Reply | ClientFailure:
        if work.failure is not None:
            return work.failure
        reply = work.reply
        if not isinstance(reply.arrays, dict) or started_on is None or current is None:
            return reply  # the algorithm's validation refuses it with a clear message
        s = rctx.version - work.version
        mix = self.alpha * self.weigh(max(s, 0))
        mixed: dict[str, Any] = {}
        try:
            for g, delta in reply.arrays.items():
                check_like(delta, spec_of(started_on[g]), what=f"update of client {work.client_id}")
                mixed[g] = {k: (mix * (started_on[g][k].astype(np.float64) + d - current[g][k])).astype(d.dtype)
                            for k, d in delta.items()}
        except (UpdateRejected, KeyError) as e:  # refused before any arithmetic on a malformed update
            return ClientFailure(work.client_id, FailureStage.VALIDATE, str(e))
        return replace(reply, arrays=mixed)
