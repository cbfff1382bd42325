"""Central differential privacy (DP-FedAvg): clipped norms never exceed the bound, the noise on the
aggregate has the configured standard deviation, the denominator is the expected cohort, adaptive
clipping finds the quantile, the accountant agrees with dp-accounting's own computation, a run stops
before its budget is crossed, and misconfigurations are refused before any training."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.aggregation import process
from cohort.core.errors import ConfigError
from cohort.core.types import ClientUpdate, RoundContext
from cohort.privacy import central_dp, epsilon, with_privacy
from cohort.privacy.accountant import record
from cohort.core.arrays import clip_to, norm
from cohort.privacy.central import ledger_of

START = {"w": np.zeros(1000, np.float32), "b": np.zeros(3, np.float64)}


def upd(cid, w, b=(0.0, 0.0, 0.0)):
    return ClientUpdate(cid, {"w": np.asarray(w, np.float32), "b": np.asarray(b, np.float64)}, 50.0, 50)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=50),
       st.floats(1e-3, 1e3))
def test_clipped_norms_never_exceed_the_bound(values, bound):
    delta = {"a": np.array(values, np.float32), "b": np.array(values[::-1], np.float64)}
    clipped, was = clip_to(delta, bound)
    assert norm(clipped) <= bound * (1 + 1e-6)
    assert was == (norm(delta) > bound)
    if not was:
        assert clipped is delta
    else:  # the same direction
        for k in delta:
            np.testing.assert_allclose(clipped[k] * (norm(delta) / norm(clipped)), delta[k], rtol=1e-4, atol=1e-3)


def run_round(agg, state, updates, r, cohort, population=100, seed=0):
    ctx = RoundContext(r, seed, cohort, population)
    return agg.aggregate(START, state, updates, ctx)


def test_the_noise_on_the_aggregate_has_the_configured_standard_deviation():
    z, clip, m = 1.3, 0.7, 10
    agg = process(privacy=central_dp(z, clip))
    state = agg.init(START)
    draws = []
    for r in range(1, 201):  # 200 rounds x 1003 coordinates of pure noise (zero updates)
        new, state = run_round(agg, state, [upd(c, np.zeros(1000)) for c in range(m)], r, m)
        draws.append(np.concatenate([new["w"].astype(np.float64), new["b"]]))
    noise = np.concatenate(draws)
    expected = z * clip / m  # std of the noise on the mean: z·C on the sum, divided by m
    n = noise.size
    # the sample std of n normal draws is within 4 standard errors (std / sqrt(2n)) of the true one
    assert abs(noise.std() - expected) < 4 * expected / math.sqrt(2 * n)
    assert abs(noise.mean()) < 4 * expected / math.sqrt(n)
    # and it is Gaussian: its excess kurtosis is near 0
    assert abs(((noise - noise.mean()) ** 4).mean() / noise.var() ** 2 - 3) < 0.05
    report = agg.report(state)
    assert report["dp_noise_std"] == pytest.approx(expected) and report["dp_clip"] == clip


def test_the_noise_follows_its_secret_key_not_the_run_seed():
    ups = [upd(c, np.ones(1000)) for c in range(4)]
    keyed = process(privacy=central_dp(1.0, 1.0, noise_key="ab" * 32))
    a, _ = run_round(keyed, keyed.init(START), ups, 3, 4, seed=7)
    b, _ = run_round(keyed, keyed.init(START), ups, 3, 4, seed=8)
    assert a["w"].tobytes() == b["w"].tobytes()  # the same key: the same noise, whatever the public seed
    fresh = process(privacy=central_dp(1.0, 1.0))  # a key of its own from the OS at every init
    c, _ = run_round(fresh, fresh.init(START), ups, 3, 4, seed=7)
    d, _ = run_round(fresh, fresh.init(START), ups, 3, 4, seed=7)
    assert c["w"].tobytes() != d["w"].tobytes() and c["w"].tobytes() != a["w"].tobytes()


def test_updates_are_clipped_weigh_one_and_the_sum_is_divided_by_the_expected_cohort():
    agg = process(privacy=central_dp(1e-9, 1.0))  # noise negligible: the arithmetic shows
    big = upd(0, np.full(1000, 1.0))  # norm √1000 ≈ 31.6: clipped to 1
    small = upd(1, np.r_[0.5, np.zeros(999)])  # norm 0.5: kept
    new, state = run_round(agg, agg.init(START), [big, small], 1, cohort=5)  # 5 expected, 2 came
    expected_w = (np.full(1000, 1 / math.sqrt(1000)) + np.r_[0.5, np.zeros(999)]) / 5
    np.testing.assert_allclose(new["w"], expected_w, rtol=1e-5, atol=1e-9)
    assert agg.report(state)["dp_clipped_fraction"] == 0.5


def test_adaptive_clipping_moves_the_clip_towards_the_quantile():
    norms = np.linspace(0.1, 10.0, 100)  # the median norm is about 5
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(100, 1000))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ups = [upd(i, directions[i] * norms[i]) for i in range(100)]
    agg = process(privacy=central_dp(1.0, 0.1, adaptive=True, target_quantile=0.5, clip_lr=0.2))
    state = agg.init(START)
    clips = []
    for r in range(1, 121):
        _, state = run_round(agg, state, ups, r, 100, population=1000)
        clips.append(state.privacy.clip)
    assert 4.0 < np.median(clips[-20:]) < 6.0  # from 0.1 to about the median norm
    low = process(privacy=central_dp(1.0, 0.1, adaptive=True, target_quantile=0.1, clip_lr=0.2))
    state = low.init(START)
    for r in range(1, 121):
        _, state = run_round(low, state, ups, r, 100, population=1000)
    assert state.privacy.clip < 2.5  # the 10% quantile is about 1.1


@pytest.mark.parametrize("q", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("z", [0.6, 1.0, 3.0])
@pytest.mark.parametrize("rounds", [1, 50, 1000])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_rdp_epsilon_equals_dp_accounting_for_the_same_mechanism(q, z, rounds, delta):
    ours = epsilon(record((), q, z, rounds), delta, "rdp")
    event = dp_accounting.GaussianDpEvent(z) if q == 1 else dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    theirs = rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(event, rounds)).get_epsilon(delta)
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("q,z,rounds", [(0.1, 1.0, 100), (0.05, 2.0, 10), (1.0, 5.0, 3)])
def test_pld_epsilon_equals_dp_accounting_and_is_tighter_than_rdp(q, z, rounds):
    ours = epsilon(record((), q, z, rounds), 1e-5, "pld")
    event = dp_accounting.GaussianDpEvent(z) if q == 1 else dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    theirs = pld.PLDAccountant().compose(dp_accounting.SelfComposedDpEvent(event, rounds)).get_epsilon(1e-5)
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours <= epsilon(record((), q, z, rounds), 1e-5, "rdp")


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    eps = [epsilon(record((), 0.1, 1.0, n), 1e-5) for n in (1, 10, 100)]
    assert eps[0] < eps[1] < eps[2]
    assert epsilon(record((), 0.1, 2.0, 100), 1e-5) < eps[2]
    # a ledger of two runs is charged for both
    mixed = record(record((), 0.1, 1.0, 50), 0.2, 1.0, 50)
    assert epsilon(record((), 0.1, 1.0, 50), 1e-5) < epsilon(mixed, 1e-5) < epsilon(record((), 0.2, 1.0, 100), 1e-5)


def test_the_budget_refuses_the_round_that_would_cross_it():
    mech = central_dp(1.0, 1.0, epsilon_max=5.0)
    agg = process(privacy=mech)
    state = agg.init(START)
    rounds = 0
    while True:
        ctx = RoundContext(rounds + 1, 0, 10, 100)
        why = agg.refusal(state, ctx)
        if why:
            break
        _, state = run_round(agg, state, [upd(c, np.ones(1000)) for c in range(10)], rounds + 1, 10)
        rounds += 1
        assert agg.report(state)["dp_epsilon"] <= 5.0
    assert rounds >= 1 and "over privacy.epsilon_max = 5" in why
    assert epsilon(record(ledger_of(state.privacy), 0.1, 1.0), 1e-5) > 5.0  # one more would have crossed it


def test_misconfigurations_are_refused():
    for kwargs, key in [({"noise_multiplier": 0, "clip": 1}, "noise_multiplier"), ({"noise_multiplier": 1, "clip": -1}, "clip"),
                        ({"noise_multiplier": 1, "clip": 1, "delta": 1.5}, "delta"),
                        ({"noise_multiplier": 1, "clip": 1, "accountant": "moments"}, "accountant"),
                        ({"noise_multiplier": 1, "clip": 1, "epsilon_max": math.inf}, "epsilon_max"),
                        ({"noise_multiplier": 1, "clip": 1, "target_quantile": 1.0}, "target_quantile")]:
        with pytest.raises(ConfigError, match=f"privacy.{key}"):
            central_dp(**kwargs)
    # adaptive clipping needs enough clients per round for the count's noise
    agg = process(privacy=central_dp(2.0, 1.0, adaptive=True))
    with pytest.raises(ConfigError, match="sample more clients per round"):
        agg.refusal(agg.init(START), RoundContext(1, 0, 10, 100))
    from cohort.algorithms import ALGORITHMS

    with pytest.raises(ConfigError, match="also sends \\['control'\\] back"):
        with_privacy(ALGORITHMS["scaffold"](), central_dp(1.0, 1.0))
    with pytest.raises(ConfigError, match="expected a cohort.privacy mechanism"):
        with_privacy(ALGORITHMS["fedavg"](), "dp")
