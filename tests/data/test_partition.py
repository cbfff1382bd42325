from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.core.errors import ConfigError, DataError
from cohort.data import (
    Partition,
    describe,
    dirichlet,
    iid,
    label_histogram,
    quantity_skew,
    shards,
    split_holdout,
)

# MNIST's training label counts, without loading MNIST.
MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
FAST = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def mnist_like_labels() -> np.ndarray:
    labels = np.repeat(np.arange(10), MNIST_COUNTS)
    return np.random.default_rng(1).permutation(labels)


def assert_covers(part: Partition, n: int) -> None:
    assert np.array_equal(np.sort(np.concatenate(list(part) + [part.order[:0]])), np.arange(n))
    assert part.sizes().sum() == n


@st.composite
def labels_and_clients(draw, per_client: int = 1):
    n = draw(st.integers(per_client, 300))
    labels = np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), dtype=np.int64)
    k = draw(st.integers(1, n // per_client))
    return labels, k, draw(st.integers(0, 2**32))


@FAST
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))), st.integers(0, 2**32))
def test_iid_covers_with_near_equal_sizes(n_k, seed):
    n, k = n_k
    part = iid(n, k, seed)
    assert len(part) == k
    assert_covers(part, n)
    assert part.sizes().max() - part.sizes().min() <= 1


@FAST
@given(labels_and_clients(per_client=2))
def test_shards_covers(case):
    labels, k, seed = case
    part = shards(labels, k, seed, shards_per_client=2)
    assert_covers(part, len(labels))
    assert part.sizes().max() - part.sizes().min() <= 2


@FAST
@given(labels_and_clients(), st.floats(0.05, 100))
def test_dirichlet_covers(case, alpha):
    labels, k, seed = case
    part = dirichlet(labels, k, seed, alpha=alpha, min_size=0)
    assert len(part) == k
    assert_covers(part, len(labels))


@FAST
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))), st.integers(0, 2**32),
       st.floats(0.05, 100), st.integers(0, 3))
def test_quantity_skew_covers_with_min_size(n_k, seed, alpha, min_size):
    n, k = n_k
    min_size = min(min_size, n // k)
    part = quantity_skew(n, k, seed, alpha=alpha, min_size=min_size)
    assert_covers(part, n)
    assert part.sizes().min() >= min_size


@FAST
@given(labels_and_clients(), st.floats(0, 0.99))
def test_split_holdout_splits_every_client(case, fraction):
    labels, k, seed = case
    part = iid(len(labels), k, seed)
    train, held = split_holdout(part, fraction, seed)
    assert len(train) == len(held) == k
    sizes, held_sizes = part.sizes(), held.sizes()
    for c in range(k):
        assert np.array_equal(np.sort(np.concatenate([train[c], held[c]])), np.sort(part[c]))
    expected = np.floor(sizes * fraction + 0.5)
    if fraction > 0:
        expected = np.maximum(expected, sizes >= 2)
    assert np.array_equal(held_sizes, np.minimum(expected, np.maximum(sizes - 1, 0)))
    assert np.all(train.sizes() >= np.minimum(sizes, 1))


@FAST
@given(labels_and_clients())
def test_histogram_matches_a_loop_and_sums_to_sizes(case):
    labels, k, seed = case
    part = dirichlet(labels, k, seed, alpha=0.3, min_size=0)
    hist = label_histogram(labels, part, 10)
    assert hist.shape == (k, 10) and hist.dtype == np.int64
    assert np.array_equal(hist.sum(axis=1), part.sizes())
    for c in range(k):
        assert np.array_equal(hist[c], np.bincount(labels[part[c]], minlength=10))


@pytest.mark.parametrize("make", [
    lambda labels, seed: iid(len(labels), 50, seed),
    lambda labels, seed: shards(labels, 50, seed),
    lambda labels, seed: dirichlet(labels, 50, seed),
    lambda labels, seed: quantity_skew(len(labels), 50, seed),
    lambda labels, seed: split_holdout(iid(len(labels), 50, 0), 0.2, seed)[1],
], ids=["iid", "shards", "dirichlet", "quantity_skew", "split_holdout"])
def test_seeded(make, mnist_like_labels):
    labels = mnist_like_labels[:5000]
    assert make(labels, 7) == make(labels, 7)
    assert make(labels, 7) != make(labels, 8)


def test_shards_on_mnist_shaped_labels(mnist_like_labels):
    part = shards(mnist_like_labels, num_clients=100, seed=0)
    assert np.all(part.sizes() == 600)
    labels_per_client = (label_histogram(mnist_like_labels, part, 10) > 0).sum(axis=1)
    assert np.sum(labels_per_client <= 2) >= 90


def test_dirichlet_small_alpha_is_more_skewed(mnist_like_labels):
    def mean_labels(alpha):
        part = dirichlet(mnist_like_labels, 100, seed=0, alpha=alpha)
        assert part.sizes().min() >= 1
        return (label_histogram(mnist_like_labels, part, 10) > 0).sum(axis=1).mean()

    assert mean_labels(0.1) < mean_labels(1.0) < mean_labels(100.0) == 10


def test_quantity_skew_small_alpha_is_more_unequal():
    assert quantity_skew(10_000, 50, 0, alpha=0.1).sizes().std() > quantity_skew(10_000, 50, 0, alpha=100).sizes().std()


def test_dirichlet_gives_up_with_a_hint():
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(DataError, match="larger alpha"):
        dirichlet(labels, 10, seed=0, alpha=0.01, min_size=2)


def test_split_holdout_zero_fraction_keeps_everything():
    part = iid(100, 7, 0)
    train, held = split_holdout(part, 0.0, 3)
    assert train == part
    assert len(held) == 7 and np.all(held.sizes() == 0)


def test_partition_access_and_immutability():
    part = Partition.from_lists([np.array([4, 2]), np.array([], dtype=np.int64), np.array([0, 1, 3])])
    assert len(part) == 3 and part.sizes().tolist() == [2, 0, 3]
    assert part[0].tolist() == [4, 2] and part[np.int64(2)].tolist() == [0, 1, 3]
    assert [c.tolist() for c in part] == [[4, 2], [], [0, 1, 3]]
    with pytest.raises(ValueError):
        part[0][0] = 9
    with pytest.raises(IndexError):
        part[3]
    with pytest.raises(IndexError):
        part[-1]
    with pytest.raises(ConfigError):
        part["0"]
    source = np.array([0, 1])
    owned = Partition(source, np.array([0, 2]))
    source[0] = 5
    assert owned[0].tolist() == [0, 1]


@pytest.mark.parametrize("order, offsets, match", [
    ([0, 1, 1], [0, 3], "more than once"),
    ([0, 1], [0, 3], "end at len"),
    ([0, 1], [1, 2], "start at 0"),
    ([0, 1], [0, 2, 1, 2], "non-decreasing"),
    ([-1, 1], [0, 2], ">= 0"),
    ([0.5, 1], [0, 2], "integer"),
])
def test_partition_rejects_bad_arrays(order, offsets, match):
    with pytest.raises(DataError, match=match):
        Partition(np.array(order), np.array(offsets))


@pytest.mark.parametrize("call, error, match", [
    (lambda y: iid(10, 0, 0), ConfigError, "num_clients=0"),
    (lambda y: iid(3, 4, 0), DataError, "n=3"),
    (lambda y: shards(y, 6, 0, shards_per_client=2), DataError, "12 shards"),
    (lambda y: shards(y, 2, 0, shards_per_client=0), ConfigError, "shards_per_client=0"),
    (lambda y: dirichlet(y, 2, 0, alpha=0), ConfigError, "alpha=0"),
    (lambda y: dirichlet(y, 2, 0, alpha=float("nan")), ConfigError, "alpha=nan"),
    (lambda y: dirichlet(y, 11, 0), DataError, "num_clients=11"),
    (lambda y: dirichlet(y.astype(float), 2, 0), DataError, "integer"),
    (lambda y: quantity_skew(10, 3, 0, alpha=-1), ConfigError, "alpha=-1"),
    (lambda y: quantity_skew(10, 3, 0, min_size=4), DataError, "min_size|at least 4"),
    (lambda y: quantity_skew(10, 3, 0, min_size=-1), ConfigError, "min_size=-1"),
    (lambda y: split_holdout(iid(10, 2, 0), 1.0, 0), ConfigError, "fraction=1.0"),
    (lambda y: split_holdout(iid(10, 2, 0), -0.1, 0), ConfigError, "fraction=-0.1"),
    (lambda y: label_histogram(y, iid(10, 2, 0), 5), DataError, "num_classes=5"),
    (lambda y: label_histogram(y[:5], iid(10, 2, 0), 10), DataError, "only 5 labels"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(np.arange(10))


def test_describe(mnist_like_labels):
    text = describe(mnist_like_labels, shards(mnist_like_labels, 100, 0), 10, max_rows=3)
    assert "100 clients" in text and "60000 examples" in text and "min 600, median 600, max 600" in text
    assert "labels per client" in text
    assert len(text.splitlines()) == 3 + 2 + 3
