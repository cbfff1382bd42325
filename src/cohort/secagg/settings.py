"""Secure aggregation composed into an algorithm: ``with_secure_aggregation(algorithm, SecureAggregation(...))``
gives it the round protocol :class:`cohort.secagg.rounds.SecureRounds`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from cohort.core.errors import ConfigError
from cohort.core.limits import MAX_SECAGG_CLIP_RANGE
from cohort.core.types import MODEL


@dataclass(frozen=True)
class SecureAggregation:
    """``threshold``: the share of each client's neighbourhood (the cohort under SecAgg) that must
    survive every stage, t (at least 2 clients); ``clip_range``: each coordinate of a model delta is clipped to [−clip_range,
    clip_range] before it is encoded into the ring Z_{2^32} (the bits per value follow from the
    cohort, so that the sum never wraps); ``degree``: 0 for SecAgg's complete graph, k > 0 for
    SecAgg+ with k neighbours per client."""

    threshold: float = 0.5
    clip_range: float = 1.0
    degree: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool) and 0 < self.threshold <= 1):
            raise ConfigError(f"secagg.threshold is {self.threshold!r}; expected a share of the cohort in (0, 1], e.g. 0.5")
        if not (isinstance(self.clip_range, (int, float)) and not isinstance(self.clip_range, bool)
                and 0 < self.clip_range <= MAX_SECAGG_CLIP_RANGE):
            raise ConfigError(f"secagg.clip_range is {self.clip_range!r}; expected a number in (0, "
                              f"{MAX_SECAGG_CLIP_RANGE:g}] (the largest absolute value of one coordinate of a model "
                              "delta that is kept; a coordinate's resolution in the ring is 2 · clip_range / 2^bits, so "
                              "a larger range rounds every delta away)")
        if not (isinstance(self.degree, int) and not isinstance(self.degree, bool) and (self.degree == 0 or self.degree >= 2)):
            raise ConfigError(f"secagg.degree is {self.degree!r}; expected 0 (SecAgg: every pair) or k >= 2 neighbours (SecAgg+)")

    def threshold_for(self, cohort: int) -> int:
        """t: a share of each client's neighbourhood (the whole cohort under SecAgg; its own and its
        ``degree`` neighbours under SecAgg+, as Bell et al. set it), at least 2."""
        group = min(cohort, self.degree + 1) if self.degree else cohort
        return min(group, max(2, math.ceil(self.threshold * group)))

    def check(self, cohort: int) -> None:
        from cohort.secagg.protocol import MAX_EXACT_CLIENTS

        if cohort < 2:
            raise ConfigError(f"secure aggregation needs at least 2 clients per round; a round has {cohort}")
        if cohort > MAX_EXACT_CLIENTS:  # the figures' limbs (cohort.secagg.figures) would wrap
            raise ConfigError(f"secure aggregation sums at most {MAX_EXACT_CLIENTS} clients per round; a round has {cohort}")


def with_secure_aggregation(algorithm, settings: SecureAggregation):
    """``algorithm`` whose rounds the server learns only the sum of: its round protocol
    (``Algorithm.rounds``) becomes :class:`cohort.secagg.rounds.SecureRounds` (the clients' side:
    ``cohort.secagg.tasks``)."""
    if not isinstance(settings, SecureAggregation):
        raise ConfigError(f"settings is a {type(settings).__name__}; expected a cohort.secagg.SecureAggregation")
    others = sorted(g for g in algorithm.aggregators if g != MODEL)
    if others:
        raise ConfigError(f"secure aggregation sums the {MODEL!r} group; {algorithm.name} also sends {others} back, "
                          "whose per-client values its server needs. Use fedavg, fedprox or fedsgd")
    agg = algorithm.aggregators[MODEL]
    if agg.combine.kind != "sum":
        raise ConfigError("with secure aggregation the server sees only the sum: a robust combine (median, trimmed "
                          "mean, Krum) cannot run; use server.aggregator = 'mean'")
    from cohort.secagg.rounds import SecureRounds

    return replace(algorithm, rounds=SecureRounds(settings))
