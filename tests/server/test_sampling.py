"""Cohort sampling: McMahan's m = max(C·K, 1), seeded, distinct, cheap for a huge population."""

import tracemalloc

import numpy as np
import pytest

from cohort.core.errors import ConfigError
from cohort.server.sampling import cohort_size, sample_cohort


@pytest.mark.parametrize("n, c, m, expected", [(100, 0.1, 1, 10), (100, 0.0001, 1, 1), (10, 1.0, 1, 10),
                                               (10, 0.29, 1, 2), (100, 0.29, 1, 29), (7, 0.5, 5, 5)])
def test_cohort_size(n, c, m, expected):
    assert cohort_size(n, c, m) == expected


@pytest.mark.parametrize("c", [0.0, -0.1, 1.01])
def test_fraction_outside_0_1_is_refused(c):
    with pytest.raises(ConfigError, match="fraction"):
        cohort_size(10, c)


def test_min_clients_above_the_population_is_refused():
    with pytest.raises(ConfigError, match="only 5 clients"):
        cohort_size(5, 0.5, 6)


def test_samples_are_seeded_sorted_distinct_and_uniform():
    a = sample_cohort(100, 10, seed=1, round=1)
    assert np.array_equal(a, sample_cohort(100, 10, seed=1, round=1))
    assert not np.array_equal(a, sample_cohort(100, 10, seed=1, round=2))
    assert len(set(a)) == 10 and np.all(np.diff(a) > 0)
    counts = np.bincount(np.concatenate([sample_cohort(20, 5, 0, r) for r in range(2000)]), minlength=20)
    assert counts.min() > 400 and counts.max() < 600  # each client ~500 times


def test_a_billion_clients_cost_no_more_than_the_cohort():
    tracemalloc.start()
    cohort = sample_cohort(1_000_000_000, 100, seed=0, round=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(cohort) == 100 and cohort.max() < 1_000_000_000
    assert peak < 1_000_000  # bytes: nothing proportional to the population
