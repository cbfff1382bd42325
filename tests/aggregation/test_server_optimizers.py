"""FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, Algorithm 2): one step by hand, then a second
that shows the state carried over; bad settings refused; the config builds them."""

import math

import numpy as np
import pytest

from cohort.aggregation import adaptive, process
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.core.types import ClientUpdate, RoundContext
from cohort.experiment import build

CTX = RoundContext(1, 0, 1)
DELTA = np.array([1.0, -2.0])


def step(kind, state=None, delta=DELTA):
    opt = adaptive(kind, 0.5, beta1=0.9, beta2=0.99, tau=0.1)
    state = opt.init({"w": np.zeros(2)}) if state is None else state
    return opt.update({"w": delta}, state, CTX)


# by hand, τ = 0.1 (v₀ = 0.01), β₁ = 0.9, β₂ = 0.99, η = 0.5, Δ = [1, −2]: m = [0.1, −0.2]
#   adagrad: v = 0.01 + Δ² = [1.01, 4.01];                step = 0.5·m / (√v + 0.1)
#   adam:    v = 0.99·0.01 + 0.01·Δ² = [0.0199, 0.0499]
#   yogi:    v = 0.01 − 0.01·Δ²·sign(0.01 − Δ²) = [0.02, 0.05]
GOLDEN = {"adagrad": [0.05 / (math.sqrt(1.01) + 0.1), -0.1 / (math.sqrt(4.01) + 0.1)],
          "adam": [0.05 / (math.sqrt(0.0199) + 0.1), -0.1 / (math.sqrt(0.0499) + 0.1)],
          "yogi": [0.05 / (math.sqrt(0.02) + 0.1), -0.1 / (math.sqrt(0.05) + 0.1)]}


@pytest.mark.parametrize("kind", ["adagrad", "adam", "yogi"])
def test_one_step_by_hand_and_the_state_carries_over(kind):
    out, state = step(kind)
    np.testing.assert_allclose(out["w"], GOLDEN[kind], rtol=1e-12)
    np.testing.assert_allclose(out["w"], [{"adagrad": 0.0452493, "adam": 0.2074117, "yogi": 0.2071068}[kind],
                                          {"adagrad": -0.0475625, "adam": -0.3092308, "yogi": -0.3090170}[kind]], rtol=1e-5)
    # a zero delta next: m decays by β₁; v stays (adagrad, yogi) or decays by β₂ (adam)
    out2, state2 = step(kind, state, np.zeros(2))
    v = state.v["w"] * (0.99 if kind == "adam" else 1.0)
    np.testing.assert_allclose(state2.v["w"], v, rtol=1e-12)
    np.testing.assert_allclose(out2["w"], 0.5 * 0.9 * state.m["w"] / (np.sqrt(v) + 0.1), rtol=1e-12)


def test_in_a_pipeline_the_step_is_added_to_the_model():
    agg = process(server_optimizer=adaptive("adam", 0.5, tau=0.1))
    start = {"w": np.array([1.0, 1.0], np.float32)}
    new, _ = agg.aggregate(start, agg.init(start), [ClientUpdate(0, {"w": np.array([1.0, -2.0], np.float32)}, 1.0, 1)], CTX)
    np.testing.assert_allclose(new["w"], 1.0 + np.array(GOLDEN["adam"]), rtol=1e-6)


def test_bad_settings_are_refused_and_the_config_builds_them():
    for kwargs, key in [({"kind": "rmsprop"}, "server.optimizer"), ({"beta1": 1.0}, "server.beta1"),
                        ({"beta2": -0.1}, "server.beta2"), ({"tau": 0}, "server.tau")]:
        args = {"kind": "adam", "learning_rate": 0.1, **kwargs}
        with pytest.raises(ConfigError, match=key):
            adaptive(**args)
    with pytest.raises(ConfigError, match="server.momentum"):
        load_config(None, ["server.optimizer=adam", "server.momentum=0.9"])
    exp = build(load_config(None, ["server.optimizer=yogi", "server.lr=0.01"]))
    state = exp.initial_state().steps["model"].server_optimizer
    assert type(state).__name__ == "AdaptiveState" and float(state.v["1.weight"].flat[0]) == pytest.approx(1e-6)
