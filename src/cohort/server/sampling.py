"""Choosing the cohort of a round: seeded, and never listing all clients while the cohort is small."""

from __future__ import annotations

import math

import numpy as np

from cohort.core.errors import ConfigError
from cohort.core.seeding import Stage, rng


def cohort_size(num_clients: int, fraction: float, min_clients: int = 1) -> int:
    """``max(min_clients, ⌊fraction · num_clients⌋)``, at most ``num_clients`` (McMahan's m = max(C·K, 1))."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction is {fraction}; expected 0 < fraction <= 1")
    if min_clients < 1:
        raise ConfigError(f"min_clients is {min_clients}; expected >= 1")
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
