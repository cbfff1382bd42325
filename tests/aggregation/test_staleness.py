"""The staleness functions of FedAsync (Xie et al. 2019), by hand; the staleness step scales a
delta by them; FedBuff runs with each; bad settings are refused."""

import numpy as np
import pytest

from cohort.aggregation import staleness_function, staleness_weight
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.core.types import ClientUpdate, RoundContext
from cohort.experiment import run


@pytest.mark.parametrize("kind, a, b, golden", [
    ("constant", 0.5, 0, {0: 1.0, 3: 1.0, 10: 1.0}),
    ("polynomial", 0.5, 0, {0: 1.0, 3: 0.5, 8: 1 / 3}),  # (s + 1)^-a
    ("polynomial", 1.0, 0, {1: 0.5, 4: 0.2}),
    ("hinge", 0.5, 2, {0: 1.0, 2: 1.0, 4: 0.5, 6: 1 / 3}),  # 1 / (a (s - b) + 1) past b
    ("hinge", 2.0, 0, {0: 1.0, 1: 1 / 3, 2: 0.2}),
])
def test_golden_values(kind, a, b, golden):
    f = staleness_function(kind, a, b)
    for s, expected in golden.items():
        assert f(s) == pytest.approx(expected, rel=1e-15)


def test_the_step_scales_the_delta_by_the_function():
    step = staleness_weight(function=staleness_function("hinge", 0.5, 2))
    u = ClientUpdate(0, {"w": np.array([2.0, -4.0], np.float32)}, 3.0, 3, version=1)
    out, _ = step.update(u, (), RoundContext(1, 0, 1, version=5))  # 4 versions old: weight 0.5
    np.testing.assert_array_equal(out.delta["w"], [1.0, -2.0])
    assert out.weight == 3.0  # it counts as often, and moves the model less


@pytest.mark.parametrize("kind", ["constant", "polynomial", "hinge"])
def test_fedbuff_runs_with_each(kind):
    result = run(load_config(None, ["rounds=4", "output.progress=false", "server.policy=fedbuff", "fedbuff.buffer_size=3",
                                    "fedbuff.concurrency=5", "simulation.speed_spread=4", f"fedbuff.staleness={kind}",
                                    "fedbuff.hinge_b=1"]), write=False)
    assert result.state.round == 4 and max(h["staleness_max"] for h in result.state.history) >= 1


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="expected one of constant, polynomial, hinge"):
        staleness_function("exponential")
    with pytest.raises(ConfigError, match="hinge's b"):
        staleness_function("hinge", 0.5, -1)
    with pytest.raises(ConfigError, match="fedbuff.staleness"):
        load_config(None, ["fedbuff.staleness=linear"])
