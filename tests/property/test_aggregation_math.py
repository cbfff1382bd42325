"""Property tests of the aggregation math: the weighted mean, streaming, server SGD."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cohort.aggregation import process, sgd, uniform_weights
from cohort.core.types import ClientUpdate, RoundContext

CTX = RoundContext(round=1, seed=0, cohort_size=0)
SHAPES = {"w": (3, 2), "b": (2,)}
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def arrays_strategy():
    return st.fixed_dictionaries({k: hnp.arrays(np.float32, s, elements=finite) for k, s in SHAPES.items()})


@st.composite
def cohorts(draw, min_size=1, max_size=8):
    n = draw(st.integers(min_size, max_size))
    deltas = [draw(arrays_strategy()) for _ in range(n)]
    weights = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
    return [ClientUpdate(i, d, float(w), w) for i, (d, w) in enumerate(zip(deltas, weights))]


def zeros():
    return {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}


def aggregate(updates, aggregator=None, start=None):
    aggregator = aggregator or process()
    start = start or zeros()
    new, _ = aggregator.aggregate(start, aggregator.init(start), updates, CTX)
    return new


def batch_mean(updates):
    w = np.array([u.weight for u in updates], np.float64)
    return {k: np.tensordot(w, np.stack([u.delta[k] for u in updates]).astype(np.float64), axes=1) / w.sum() for k in SHAPES}


def close(a, b, tol=1e-4):
    return all(np.allclose(a[k], b[k], rtol=tol, atol=tol) for k in SHAPES)


@settings(max_examples=60, deadline=None)
@given(cohorts(), st.randoms(use_true_random=False))
def test_permutation_invariant(updates, random):
    shuffled = list(updates)
    random.shuffle(shuffled)
    assert close(aggregate(updates), aggregate(shuffled))


@settings(max_examples=60, deadline=None)
@given(arrays_strategy(), st.lists(st.integers(1, 10_000), min_size=1, max_size=10))
def test_mean_of_identical_updates_is_that_update(delta, weights):
    updates = [ClientUpdate(i, delta, float(w), w) for i, w in enumerate(weights)]
    out = aggregate(updates)
    for k in SHAPES:
        np.testing.assert_allclose(out[k], delta[k], rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(cohorts())
def test_streaming_equals_batch(updates):
    assert close(aggregate(updates), batch_mean(updates))


@settings(max_examples=60, deadline=None)
@given(cohorts(max_size=5))
def test_integer_weights_act_as_repetitions(updates):
    """Weight w counts exactly like w copies of the same update with weight 1."""
    repeated = [ClientUpdate(u.client_id, u.delta, 1.0, 1) for u in updates for _ in range(int(u.weight) % 7 + 1)]
    reweighted = [ClientUpdate(u.client_id, u.delta, float(int(u.weight) % 7 + 1), 1) for u in updates]
    assert close(aggregate(repeated), aggregate(reweighted))


@settings(max_examples=60, deadline=None)
@given(cohorts(min_size=2))
def test_uniform_weights_ignore_example_counts(updates):
    expected = {k: np.mean([u.delta[k] for u in updates], axis=0, dtype=np.float64) for k in SHAPES}
    assert close(aggregate(updates, process(pre=[uniform_weights()])), expected)


@settings(max_examples=40, deadline=None)
@given(cohorts(), arrays_strategy(), st.floats(0.01, 5.0))
def test_server_learning_rate_scales_the_mean_step(updates, start, lr):
    plain = aggregate(updates, start=start)
    scaled = aggregate(updates, process(server_optimizer=sgd(lr)), start=start)
    for k in SHAPES:
        np.testing.assert_allclose(scaled[k] - start[k], lr * (plain[k] - start[k]), rtol=1e-3, atol=1e-2)
