"""Robust aggregation: golden values of the median, trimmed mean, Krum and Multi-Krum; n >= 2f + 3
and empty trims refused at start (and a round that fell below them refused); norm bounding; robust
combines withstand 20% scaled updates where the mean does not; the attack simulators."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.aggregation import process
from cohort.aggregation.robust import coordinate_median, krum, norm_bound, trimmed_mean
from cohort.client.attacks import Attack, choose_attackers, flip_labels
from cohort.client.base import Trained
from cohort.config import load_config
from cohort.core.arrays import norm
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.types import ClientUpdate, RoundContext
from cohort.experiment import build

START = {"w": np.zeros(2, np.float32)}
CTX = RoundContext(1, 0, 5, 100)


def ups(*rows, weight=1.0):
    return [ClientUpdate(i, {"w": np.asarray(r, np.float32)}, weight * (i + 1), 1) for i, r in enumerate(rows)]


def combined(combine, rows, pre=()):
    agg = process(combine=combine, pre=list(pre))
    new, _ = agg.aggregate(START, agg.init(START), ups(*rows), CTX)
    return new["w"]


def test_median_and_trimmed_mean_golden_values():
    rows = [[1, -5], [2, 0], [3, 1], [4, 2], [100, 3]]
    np.testing.assert_array_equal(combined(coordinate_median(), rows), np.array([3, 1], np.float32))
    # β = 0.2 of 5: one cut from each end of each coordinate: mean(2, 3, 4), mean(0, 1, 2)
    np.testing.assert_array_equal(combined(trimmed_mean(0.2), rows), np.array([3, 1], np.float32))
    np.testing.assert_allclose(combined(trimmed_mean(0.0), rows), np.array([22, 0.2], np.float32), rtol=1e-6)
    # the example weights (1..5 here) do not count: a client cannot buy influence by claiming examples
    np.testing.assert_array_equal(combined(coordinate_median(), [[0, 0], [0, 0], [9, 9]]), np.zeros(2, np.float32))


def test_krum_and_multi_krum_golden_values():
    rows = [[0, 0], [1, 0], [0, 1], [10, 10], [-50, 40]]
    # n = 5, f = 1: each scored by its n - f - 2 = 2 nearest squared distances
    # [0,0]: 1 + 1 = 2; [1,0]: 1 + 2 = 3; [0,1]: 1 + 2 = 3; [10,10]: 181 + 181 = 362; [-50,40]: big
    np.testing.assert_array_equal(combined(krum(1), rows), np.array([0, 0], np.float32))
    np.testing.assert_allclose(combined(krum(1, select=3), rows), np.array([1 / 3, 1 / 3], np.float32), rtol=1e-6)


def test_impossible_settings_are_refused_at_start_and_short_rounds_are_refused():
    with pytest.raises(ConfigError, match=r"n >= 2f \+ 3 = 7"):
        krum(2).check(6)
    with pytest.raises(ConfigError, match="more than the n − f = 4 honest"):
        krum(1, select=5).check(5)
    for bad in (-0.1, 0.5, "x"):
        with pytest.raises(ConfigError, match="server.trim_fraction"):
            trimmed_mean(bad)
    with pytest.raises(ConfigError, match="server.krum_byzantine"):
        krum(-1)
    with pytest.raises(UpdateRejected, match="only 4 updates were accepted this round"):
        combined(krum(1), [[0, 0], [1, 0], [0, 1], [1, 1]])  # clients dropped below 2f + 3


def test_norm_bound_caps_every_update():
    agg = process(pre=[norm_bound(1.0)])
    state = agg.init(START)
    round_acc = agg.start(START, state, CTX)
    for u in ups([3, 4], [0.3, 0.4]):
        prepared = agg.prepare(round_acc, u)
        assert norm(prepared[0].delta) <= 1.0 + 1e-6
    with pytest.raises(ConfigError, match="server.norm_bound"):
        norm_bound(0)


def test_robust_combines_withstand_20_percent_scaled_updates_where_the_mean_does_not():
    rng = np.random.default_rng(0)
    honest = rng.normal(1.0, 0.1, size=(40, 2))
    attacked = np.vstack([honest, 100 * rng.normal(1.0, 0.1, size=(10, 2))])  # 10 of 50 scaled x100
    rows = attacked.tolist()
    truth = honest.mean(axis=0)
    mean = combined(None, rows)
    assert np.abs(mean - truth).max() > 10
    for combine in (coordinate_median(), trimmed_mean(0.25), krum(10), krum(10, select=20)):
        assert np.abs(combined(combine, rows) - truth).max() < 0.15


class Honest:
    def train(self, arrays, config, hooks):
        return Trained({"w": np.array([1.0, -2.0], np.float32)}, 10)

    def gradient(self, arrays, config):
        return self.train(arrays, config, None)

    def evaluate(self, arrays, config):
        raise AssertionError("not used")


def test_the_attacks_poison_only_the_attackers_updates():
    attackers = choose_attackers(100, 0.2, seed=3)
    assert len(attackers) == 20 and attackers == choose_attackers(100, 0.2, seed=3) != choose_attackers(100, 0.2, seed=4)
    bad, good = min(attackers), min(set(range(100)) - attackers)
    config = {"round": 2}
    for kind, expected in (("sign_flip", [-1.0, 2.0]), ("scale", [10.0, -20.0])):
        fn = Attack(lambda cid: Honest(), attackers, kind, scale=10.0)
        np.testing.assert_array_equal(fn(bad).train({}, config, None).delta["w"], expected)
        np.testing.assert_array_equal(fn(good).train({}, config, None).delta["w"], [1.0, -2.0])
    noisy = Attack(lambda cid: Honest(), attackers, "noise", noise_std=3.0)
    draws = np.concatenate([noisy(bad).train({}, {"round": r}, None).delta["w"] for r in range(2000)])
    assert abs(draws.std() - 3.0) < 0.15 and abs(draws.mean()) < 0.15
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9, 3]), np.array([0, 2]), 10), [9, 1, 0, 3])
    with pytest.raises(ConfigError, match="attack.kind"):
        Attack(lambda cid: Honest(), attackers, "backdoor")


@pytest.mark.parametrize("sets, why", [
    (["server.aggregator=mode"], "server.aggregator is 'mode'"),
    (["server.aggregator=krum", "server.krum_byzantine=4"], "n >= 2f + 3 = 11"),
    (["server.aggregator=median", "privacy.mode=central"], "a robust combine"),
    (["attack.kind=backdoor"], "attack.kind is 'backdoor'"),
    (["attack.fraction=1.0"], "attack.fraction"),
])
def test_config_errors(sets, why):
    with pytest.raises(ConfigError) as e:
        build(load_config(None, sets))
    assert why in str(e.value)


def test_label_flipping_changes_only_the_attackers_labels():
    clean = build(load_config(None, []))
    flipped = build(load_config(None, ["attack.kind=label_flip", "attack.fraction=0.3"]))
    changed = np.flatnonzero(clean.train.y != flipped.train.y)
    mine = np.concatenate([flipped.partition[c] for c in flipped.attackers])
    assert len(flipped.attackers) == 3 and set(changed) <= set(mine) and len(changed) == len(mine)


rows_strategy = st.lists(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=2),
                         min_size=5, max_size=12)


@settings(max_examples=60, deadline=None)
@given(rows_strategy)
def test_median_and_trimmed_mean_stay_within_each_coordinates_range(rows):
    lo, hi = np.min(rows, axis=0), np.max(rows, axis=0)
    for combine in (coordinate_median(), trimmed_mean(0.2)):
        out = combined(combine, rows).astype(np.float64)
        assert (out >= lo - 1e-3).all() and (out <= hi + 1e-3).all()


@settings(max_examples=60, deadline=None)
@given(rows_strategy)
def test_krum_returns_one_of_its_inputs(rows):
    out = combined(krum(1), rows)
    assert any(np.array_equal(out, np.asarray(r, np.float32)) for r in rows)
