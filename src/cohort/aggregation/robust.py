"""Robust aggregation: combines that a minority of poisoned updates cannot steer, and norm bounding.

- :func:`coordinate_median` (Yin et al. 2018): the median of each coordinate.
- :func:`trimmed_mean` (Yin et al. 2018): each coordinate's mean after dropping its ``β·n`` largest
  and ``β·n`` smallest values.
- :func:`krum` (Blanchard et al. 2017): the update whose ``n − f − 2`` nearest neighbours are closest
  (squared L2 distance); with ``select = m > 1`` Multi-Krum, the mean of the ``m`` best scored. It
  needs ``n ≥ 2f + 3``.
- :func:`norm_bound` (Sun et al. 2019): a per-client step that scales every update down to a norm
  of at most ``max_norm``; it composes with any combine.

The robust combines hold the round's updates (one model per client) until the round ends, since
a median cannot be folded in one update at a time, and they weigh every client equally (an example
count is the client's own claim). ``Combine.check(n)`` refuses a cohort too small for the chosen
``f`` or ``β`` before any training; at the end of a round with fewer updates than that (clients
dropped), the round is refused rather than aggregated without the guarantee.
"""

from __future__ import annotations

import math

import numpy as np

from cohort.aggregation.pipeline import Aggregate, Combine, Step
from cohort.core.arrays import NamedArrays, clip_to
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.types import ClientUpdate, RoundContext


def _stack(acc: dict, name: str) -> np.ndarray:
    return np.stack([d[name].astype(np.float64) for d in acc["deltas"]])


def _holding(check, result) -> Combine:
    """A combine that keeps every delta of the round and combines them at the end."""

    def init(arrays: NamedArrays) -> dict:
        return {"names": list(arrays), "deltas": []}

    def add(acc: dict, u: ClientUpdate) -> dict:
        acc["deltas"].append(u.delta)
        return acc

    def finish(acc: dict) -> Aggregate:
        n = len(acc["deltas"])
        try:
            check(n)
        except ConfigError as e:
            raise UpdateRejected(f"only {n} updates were accepted this round: {e}") from e
        return Aggregate(result(acc), 1.0, n)  # the combined delta itself, with weight 1

    return Combine(init, add, finish, kind="robust", check=check)


def coordinate_median() -> Combine:
    def check(n: int) -> None:
        if n < 1:
            raise ConfigError("the coordinate-wise median needs at least 1 update")

    return _holding(check, lambda acc: {k: np.median(_stack(acc, k), axis=0) for k in acc["names"]})


def trimmed_mean(beta: float) -> Combine:
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 <= beta < 0.5):
        raise ConfigError(f"server.trim_fraction is {beta!r}; expected 0 <= β < 0.5 (the share cut from each end)")

    def check(n: int) -> None:  # β < 1/2 always keeps at least one value
        if n < 1:
            raise ConfigError("a trimmed mean needs at least 1 update")

    def result(acc: dict) -> NamedArrays:
        n = len(acc["deltas"])
        cut = math.floor(beta * n)
        out = {}
        for k in acc["names"]:
            values = np.sort(_stack(acc, k), axis=0)
            out[k] = values[cut:n - cut].mean(axis=0)
        return out

    return _holding(check, result)


def krum(byzantine: int, select: int = 1) -> Combine:
    """Krum (``select = 1``) or Multi-Krum (``select = m``) tolerating ``byzantine = f`` attackers."""
    for name, v, low in (("server.krum_byzantine", byzantine, 0), ("server.krum_select", select, 1)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
            raise ConfigError(f"{name} is {v!r}; expected an integer >= {low}")

    def check(n: int) -> None:
        if n < 2 * byzantine + 3:
            raise ConfigError(f"Krum with f = {byzantine} attackers needs n >= 2f + 3 = {2 * byzantine + 3} updates per "
                              f"round, and a round has {n}: sample more clients (server.fraction) or lower "
                              "server.krum_byzantine")
        if select > n - byzantine:
            raise ConfigError(f"Multi-Krum selects server.krum_select = {select} of {n} updates, more than the "
                              f"n − f = {n - byzantine} honest ones it can trust")

    def result(acc: dict) -> NamedArrays:
        n = len(acc["deltas"])
        flat = np.stack([np.concatenate([d[k].astype(np.float64).ravel() for k in acc["names"]]) for d in acc["deltas"]])
        sq = (flat ** 2).sum(axis=1)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
        np.fill_diagonal(dist, np.inf)
        nearest = n - byzantine - 2
        scores = np.sort(dist, axis=1)[:, :nearest].sum(axis=1)
        chosen = np.argsort(scores, kind="stable")[:select]
        return {k: np.mean([acc["deltas"][i][k].astype(np.float64) for i in chosen], axis=0) for k in acc["names"]}

    return _holding(check, result)


def norm_bound(max_norm: float) -> Step:
    """Scale each update down to L2 norm ``max_norm`` (over all its arrays); smaller ones pass as they are."""
    if not (isinstance(max_norm, (int, float)) and not isinstance(max_norm, bool) and 0 < max_norm < math.inf):
        raise ConfigError(f"server.norm_bound is {max_norm!r}; expected a finite number > 0")

    def update(u: ClientUpdate, state, ctx: RoundContext):
        delta, _ = clip_to(u.delta, max_norm)
        return (u if delta is u.delta else ClientUpdate(u.client_id, delta, u.weight, u.num_examples, u.metrics, u.version)), state

    return Step(lambda arrays: (), update)
