"""The adaptive update bound: no single client's arithmetic can carry the model away."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cohort.aggregation import process
from cohort.aggregation.bound import WINDOW, BoundState, adaptive_bound
from cohort.aggregation.robust import coordinate_median
from cohort.core.arrays import norm
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.tree import decode, encode
from cohort.core.types import ClientUpdate, RoundContext

CTX = RoundContext(1, 0, 5, 5)


def bounded(combine=None, m=4.0, mw=10.0):
    return replace(process(combine=combine), bound=adaptive_bound(m, mw))


def ups(deltas, weights=None):
    weights = weights or [10] * len(deltas)
    return [ClientUpdate(i, {"w": np.asarray(d, np.float32)}, float(w), int(w)) for i, (d, w) in enumerate(zip(deltas, weights))]


def test_a_finite_3e38_update_is_scaled_to_the_bound_and_named():
    agg = bounded()
    arrays = {"w": np.zeros(3, np.float32)}
    state = agg.init(arrays)
    honest = [[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1], [0.1, 0.1, 0.0]]
    new, state = agg.aggregate(arrays, state, ups(honest + [[3e38, 3e38, 3e38]]), CTX)
    report = agg.report(state)
    norms = [norm({"w": np.asarray(d, np.float64)}) for d in honest] + [3e38 * np.sqrt(3)]
    b = 4 * float(np.median(norms))
    assert report["norm_bound"] == pytest.approx(b)
    assert report["updates_bounded"] == 1 and "client 4" in report["bounded"][0]
    # the model moved no further than the bound allows: the attacker's share is b/5 at most
    assert np.isfinite(new["w"]).all() and norm(new) <= (0.1 * 2 ** 0.5 * 4 + b) / 5 + 1e-6


def test_the_sum_is_every_update_within_the_bound_and_its_weight_capped():
    agg = bounded(m=2.0, mw=2.0)
    arrays = {"w": np.zeros(2, np.float32)}
    state = agg.init(arrays)
    deltas = [[1, 0], [0, 1], [1, 1], [10, 0]]
    weights = [1, 1, 1, 100]
    new, state = agg.aggregate(arrays, state, ups(deltas, weights), CTX)
    norms = [1, 1, 2 ** 0.5, 10]
    b, w = 2 * np.median(norms), 2 * np.median(weights)
    expected_sum = np.zeros(2)
    total = 0.0
    for d, wt, n in zip(deltas, weights, norms):
        d = np.asarray(d, np.float64) * min(1.0, b / n)
        expected_sum += min(wt, w) * d
        total += min(wt, w)
    np.testing.assert_allclose(new["w"], (expected_sum / total).astype(np.float32), rtol=1e-6)


def test_updates_within_the_bound_are_untouched_and_the_round_equals_plain_fedavg():
    plain, guarded = process(), bounded()
    arrays = {"w": np.ones(4, np.float32)}
    rng = np.random.default_rng(1)
    sp, sg = plain.init(arrays), guarded.init(arrays)
    a, b = arrays, arrays
    for r in range(4):
        batch = ups([rng.normal(0, 1, 4) for _ in range(6)], [int(x) for x in rng.integers(5, 20, 6)])
        a, sp = plain.aggregate(a, sp, batch, replace(CTX, round=r + 1))
        b, sg = guarded.aggregate(b, sg, batch, replace(CTX, round=r + 1))
        assert guarded.report(sg)["updates_bounded"] == 0
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)


def test_one_arrival_per_step_is_bounded_by_the_recent_updates_not_by_itself():
    """FedAsync's steps fold one update each: the median over the window, not over the step, bounds it."""
    agg = bounded()
    arrays = {"w": np.zeros(2, np.float32)}
    state = agg.init(arrays)
    for _ in range(10):
        arrays, state = agg.aggregate(arrays, state, ups([[0.1, 0.0]]), CTX)
    before = arrays["w"].copy()
    arrays, state = agg.aggregate(arrays, state, ups([[1e30, 0.0]]), CTX)
    assert agg.report(state)["updates_bounded"] == 1
    assert abs(arrays["w"][0] - before[0]) <= 4 * 0.1 + 1e-6


def test_only_outliers_wait_once_there_is_history():
    agg = bounded()
    arrays = {"w": np.zeros(2, np.float32)}
    state = agg.init(arrays)
    arrays, state = agg.aggregate(arrays, state, ups([[0.1, 0], [0, 0.1], [0.1, 0.1]]), CTX)
    acc = agg.start(arrays, state, CTX)
    for u in ups([[0.1, 0.0], [5.0, 0.0], [0.0, 0.1]]):
        acc = agg.add(acc, u)
    assert [u.client_id for u in acc.held] == [1]  # the honest two were folded as they came
    assert len(acc.seen) == 3


def test_a_robust_combine_sees_bounded_updates():
    agg = bounded(coordinate_median())
    arrays = {"w": np.zeros(1, np.float32)}
    state = agg.init(arrays)
    new, state = agg.aggregate(arrays, state, ups([[1.0], [1.0], [3e38]]), CTX)
    assert new["w"][0] == pytest.approx(1.0)
    assert agg.report(state)["updates_bounded"] == 1


def test_the_state_survives_a_checkpoint_and_the_next_round_gives_the_same_bits():
    agg = bounded()
    arrays = {"w": np.zeros(3, np.float32)}
    state = agg.init(arrays)
    rng = np.random.default_rng(2)
    arrays, state = agg.aggregate(arrays, state, ups([rng.normal(0, 1, 3) for _ in range(5)]), CTX)
    blobs: dict = {}
    back = decode(encode(state, blobs), blobs)
    batch = ups([rng.normal(0, 1, 3) for _ in range(5)] + [[1e20, 0, 0]])
    a, _ = agg.aggregate(arrays, state, batch, CTX)
    b, _ = agg.aggregate(arrays, back, batch, CTX)
    assert a["w"].tobytes() == b["w"].tobytes()
    assert isinstance(back.bound, BoundState)


def test_the_window_keeps_the_last_updates_only():
    agg = bounded()
    arrays = {"w": np.zeros(1, np.float32)}
    state = agg.init(arrays)
    for _ in range(3):
        arrays, state = agg.aggregate(arrays, state, ups([[0.01]] * 60), CTX)
    import json

    assert len(json.loads(state.bound.recent)) == WINDOW


def test_an_absurdly_large_model_is_never_kept():
    agg = process()  # no bound: the last guard still holds
    arrays = {"w": np.zeros(2, np.float32)}
    state = agg.init(arrays)
    with pytest.raises(UpdateRejected, match="absurdly large"):
        agg.aggregate(arrays, state, ups([[3e37, 0.0]]), CTX)


@pytest.mark.parametrize("m", [0.5, float("inf"), True, "4"])
def test_the_multipliers_are_checked_by_name(m):
    with pytest.raises(ConfigError, match="server.norm_bound_multiplier"):
        adaptive_bound(m, 10.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=9),
       st.lists(st.floats(-3e38, 3e38, allow_nan=False), min_size=1, max_size=4),
       st.lists(st.integers(1, 10**15), min_size=13, max_size=13))
def test_property_a_hostile_minority_moves_the_model_no_further_than_the_honest_bound(honest, hostile, counts):
    hostile = hostile[: (len(honest) - 1) // 2 or 1] if len(honest) > 2 else hostile[:1]
    values = honest + hostile
    agg = bounded()
    arrays = {"w": np.zeros(1, np.float32)}
    state = agg.init(arrays)
    new, state = agg.aggregate(arrays, state, ups([[v] for v in values], counts[:len(values)]), CTX)
    report = agg.report(state)
    assert np.isfinite(new["w"]).all()
    assert abs(float(new["w"][0])) <= report["norm_bound"] * (1 + 1e-5) + 1e-30
    # the median of a set with an honest majority lies among the honest values: so does the bound / 4
    assert report["norm_bound"] <= 4 * max(abs(float(np.float32(v))) for v in honest) * (1 + 1e-6)
    norms = [abs(float(np.float32(v))) for v in values]
    assert report["norm_bound"] == pytest.approx(4 * float(np.median(norms)), rel=1e-6)
