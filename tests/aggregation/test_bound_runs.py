"""The default update bound in whole simulated runs: a fifth of the clients scaling their updates by
10⁶ cannot ruin the model, with the plain mean, with a robust combine, and with compressed updates;
with the bound turned off the same attack does ruin it."""

import pytest

from cohort.config import load_config
from cohort.experiment import run

ATTACK = ["attack.kind=scale", "attack.scale=1e6", "attack.fraction=0.2"]


def final_accuracy(tmp_path, *sets):
    config = load_config(None, [f"output.dir={tmp_path}", "output.progress=false", "rounds=8", *sets])
    result = run(config, write=False)
    return result.state.history


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return final_accuracy(tmp_path_factory.mktemp("clean"))[-1]


@pytest.mark.parametrize("extra", [[], ["compression.kind=int8"], ["server.aggregator=trimmed_mean", "server.trim_fraction=0.2"]],
                         ids=["mean", "int8", "trimmed_mean"])
def test_scaled_attackers_are_bounded_by_default(tmp_path, clean, extra):
    history = final_accuracy(tmp_path, *ATTACK, *extra)
    assert all(r["status"] == "ok" and r["update_bound"] == "auto" for r in history)  # every record says so
    assert sum(r["updates_bounded"] for r in history) >= 2 * len(history)  # the two attackers, every round
    assert any("scaled down to the bound" in line for r in history for line in r.get("bounded", []))
    assert history[-1]["accuracy"] >= clean["accuracy"] - 0.03
    assert history[-1]["loss"] < 2 * clean["loss"]


def test_without_the_bound_the_same_attack_ruins_the_model(tmp_path, clean):
    history = final_accuracy(tmp_path, *ATTACK, "server.norm_bound=0")
    assert "norm_bound" not in history[-1] and all(r["update_bound"] == "off" for r in history)
    # the model is carried far away: its test loss is many times the clean run's
    assert history[-1]["loss"] > 10 * clean["loss"], (history[-1]["loss"], clean["loss"])
