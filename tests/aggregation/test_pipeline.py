"""Golden values of the pipeline on tiny inputs, validation, chaining and server momentum."""

from dataclasses import replace

import numpy as np
import pytest

from cohort.aggregation import Step, chain, process, sgd, uniform_weights
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.types import ClientUpdate, RoundContext

CTX = RoundContext(1, 0, 2)
START = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(5, np.int64)}


def update(cid, w, weight, n=None):
    return ClientUpdate(cid, {"w": np.array(w, np.float32), "n": np.array(1, np.int64)}, float(weight), n or weight)


def test_fedavg_golden_values():
    agg = process()
    new, _ = agg.aggregate(START, agg.init(START), [update(0, [1, 0], 1), update(1, [-1, 3], 3)], CTX)
    # mean delta = (1*[1,0] + 3*[-1,3]) / 4 = [-0.5, 2.25]
    np.testing.assert_array_equal(new["w"], np.array([0.5, 4.25], np.float32))
    assert new["n"] == 6 and new["n"].dtype == np.int64


def test_unweighted_mean_golden_values():
    agg = process(pre=[uniform_weights()])
    new, _ = agg.aggregate(START, agg.init(START), [update(0, [1, 0], 1), update(1, [-1, 3], 3)], CTX)
    np.testing.assert_array_equal(new["w"], np.array([1.0, 3.5], np.float32))


def test_server_momentum_accumulates_across_rounds():
    agg = process(server_optimizer=sgd(0.5, momentum=0.9))
    arrays, state = START, agg.init(START)
    arrays, state = agg.aggregate(arrays, state, [update(0, [2, 0], 1)], CTX)
    np.testing.assert_allclose(arrays["w"], [2.0, 2.0])  # v = [2, 0]; step 0.5 * v
    arrays, state = agg.aggregate(arrays, state, [update(0, [2, 0], 1)], CTX)
    np.testing.assert_allclose(arrays["w"], [3.9, 2.0])  # v = 0.9*2 + 2 = 3.8; step 1.9


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"w": np.array([np.nan, 0], np.float32), "n": np.array(0)}, "non-finite"),
        ({"w": np.array([np.inf, 0], np.float32), "n": np.array(0)}, "non-finite"),
        ({"w": np.zeros(3, np.float32), "n": np.array(0)}, "shape"),
        ({"w": np.zeros(2, np.float32)}, "missing"),
        ({"w": np.zeros(2, np.float32), "n": np.array(0), "x": np.zeros(1)}, "unexpected"),
        ({"w": [0.0, 0.0], "n": np.array(0)}, "numpy array"),
        ({"w": np.array(["a", "b"]), "n": np.array(0)}, "dtype"),
        ("garbage", "dict"),
    ],
)
def test_validation_rejects_malformed_updates_and_keeps_the_round(bad, message):
    agg = process()
    acc = agg.start(START, agg.init(START), CTX)
    acc = agg.add(acc, update(0, [1, 1], 2))
    with pytest.raises(UpdateRejected, match=message):
        agg.add(acc, ClientUpdate(7, bad, 1.0, 1))
    new, _ = agg.finish(acc)  # the rejected update left no trace
    np.testing.assert_array_equal(new["w"], np.array([2.0, 3.0], np.float32))


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_validation_rejects_bad_weights(weight):
    agg = process()
    acc = agg.start(START, agg.init(START), CTX)
    with pytest.raises(UpdateRejected, match="weight"):
        agg.add(acc, replace(update(0, [1, 1], 1), weight=weight))


def test_chain_runs_in_order_and_threads_state():
    def scale(k):
        return Step(lambda a: 0, lambda v, s, ctx: (v * k, s + 1))

    def add(k):
        return Step(lambda a: 0, lambda v, s, ctx: (v + k, s + 1))

    step = chain(scale(2), add(1))
    value, state = step.update(3, step.init({}), CTX)
    assert value == 7 and state == (1, 1)
    value, state = step.update(3, state, CTX)
    assert state == (2, 2)


def test_chain_names_a_factory_passed_uncalled():
    with pytest.raises(TypeError, match="factory"):
        chain(uniform_weights)


@pytest.mark.parametrize("lr, momentum", [(0.0, 0.0), (-1.0, 0.0), (1.0, 1.0), (1.0, -0.1)])
def test_server_optimizer_arguments_checked_in_the_factory(lr, momentum):
    with pytest.raises(ConfigError):
        sgd(lr, momentum)


def test_inputs_are_never_modified():
    agg = process()
    u = update(0, [1, 2], 2)
    before = {k: v.copy() for k, v in u.delta.items()}
    start = {k: v.copy() for k, v in START.items()}
    agg.aggregate(start, agg.init(start), [u, update(1, [3, 4], 1)], CTX)
    for k in before:
        np.testing.assert_array_equal(u.delta[k], before[k])
        np.testing.assert_array_equal(start[k], START[k])


def test_the_chunked_fold_gives_the_same_bits_as_one_numpy_expression():
    from cohort.aggregation.weighting import CHUNK, _fold

    gen = np.random.default_rng(3)
    for shape, dtype in (((3 * CHUNK + 17,), np.float32), ((700, 301), np.float64), ((CHUNK // 2,), np.float32),
                         ((257, 2 * CHUNK // 256 + 3), np.int64)):
        delta = (gen.standard_normal(shape) * 1e3).astype(dtype)
        if delta.ndim == 2:
            delta = np.asfortranarray(delta)  # not C-contiguous
        s1, s2 = gen.standard_normal(shape), None
        s2 = s1.copy()
        w = np.float64(gen.uniform(1, 1000))
        s1 += w * delta
        _fold(s2, w, delta)
        assert s1.tobytes() == s2.tobytes(), (shape, dtype)
