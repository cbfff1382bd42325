"""Choosing the cohort of a round: seeded, and never listing all clients while the cohort is small."""

from __future__ import annotations

import math

import numpy as np

from cohort.core.errors import ConfigError, check
from cohort.core.seeding import Stage, rng


def check_sampling(fraction: float, min_clients: int = 1, over_selection: float = 0.0) -> None:
    """The one check of how rounds sample (``server.fraction``, ``min_clients``, ``over_selection``): the
    config, the synchronous policy and ``cohort_size`` all run it."""
    def number(v, integer=False):
        return isinstance(v, int if integer else (int, float)) and not isinstance(v, bool)

    check(number(fraction) and 0 < fraction <= 1, "server.fraction", fraction, "0 < fraction <= 1")
    check(number(min_clients, integer=True) and min_clients >= 1, "server.min_clients", min_clients, "an integer >= 1")
    check(number(over_selection) and 0 <= over_selection <= 10, "server.over_selection", over_selection,
          "0 (none) to 10, e.g. 0.3 for 30% more clients than a round needs")


def cohort_size(num_clients: int, fraction: float, min_clients: int = 1) -> int:
    """``max(min_clients, ⌊fraction · num_clients⌋)``, at most ``num_clients`` (McMahan's m = max(C·K, 1))."""
    check_sampling(fraction, min_clients)
    if min_clients > num_clients:
        raise ConfigError(f"min_clients is {min_clients} but there are only {num_clients} clients; lower min_clients")
    return min(num_clients, max(min_clients, math.floor(fraction * num_clients + 1e-9)))


def sample_cohort(num_clients: int, size: int, seed: int, round: int, stage: Stage = Stage.SAMPLE) -> np.ndarray:
    """``size`` distinct client ids in ascending order, drawn uniformly from ``range(num_clients)``."""
    if size >= num_clients:
        return np.arange(num_clients, dtype=np.int64)
    # Generator.choice without replacement uses a hash-set draw, O(size) memory, when num_clients > 10,000
    # and size < num_clients / 50; otherwise it permutes the population, which is then at most 50 times
    # the cohort (or 10,000 clients) in size.
    chosen = rng(seed, round, stage).choice(num_clients, size=size, replace=False)
    return np.sort(chosen).astype(np.int64)
