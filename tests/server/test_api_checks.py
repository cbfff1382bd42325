"""The Python API keeps the CLI's standard: bad arguments get a clear error naming them."""

import math

import numpy as np
import pytest
from fakes import ScriptedClients, start_arrays

import cohort
from cohort.core.errors import ConfigError


def sim(settings=None, **kw):
    args = dict(client_fn=ScriptedClients(), num_clients=4, arrays=start_arrays(),
                settings=settings or cohort.LoopSettings(rounds=1))
    args.update(kw)
    return cohort.simulate(**args)


@pytest.mark.parametrize("rounds", [2.5, math.nan, math.inf, 2**70, 0, True, "3"])
def test_rounds_must_be_a_bounded_integer(rounds):
    with pytest.raises(ConfigError, match=r"rounds is .*; expected an integer from 1"):
        cohort.LoopSettings(rounds=rounds)


@pytest.mark.parametrize("kw, message", [
    ({"num_clients": 2.5}, "num_clients is 2.5; expected an integer >= 1"),
    ({"seed": -1}, "seed is -1; expected an integer from 0"),
    ({"arrays": {}}, "arrays is empty"),
    ({"algorithm": cohort.fedavg}, r"call the factory: cohort.fedavg\(\)"),
    ({"threads": 2**40}, "simulation.threads is 1099511627776"),
    ({"backend": "gpu"}, "backend is 'gpu'; expected one of inprocess, processes"),
])
def test_simulate_names_the_bad_argument(kw, message):
    with pytest.raises(ConfigError, match=message):
        sim(**kw)


def test_defaults_agree_with_the_cli_and_the_cohort_size_is_printed(capsys):
    state, _ = sim()
    assert cohort.LoopSettings(rounds=1).fraction == 1.0
    assert state.history[0]["clients_sampled"] == 4
    assert "4 clients, 4 per round" in capsys.readouterr().out


@pytest.mark.parametrize("result, message", [
    (None, "returned a NoneType; expected a dict"),
    ("0.9", "returned a str"),
    ({"round": 3.0}, "the metric 'round', a name the round record uses"),
    ({"status": 1.0}, "'status'"),
    ({"accuracy": "high"}, "'accuracy' = 'high'; expected a number"),
])
def test_a_bad_server_evaluation_is_a_clear_error(result, message):
    with pytest.raises(ConfigError, match=message):
        sim(evaluate=lambda arrays: result)


def test_non_finite_evaluation_values_are_left_out():
    state, _ = sim(evaluate=lambda arrays: {"accuracy": 0.5, "loss": math.nan})
    assert state.history[0]["accuracy"] == 0.5 and "loss" not in state.history[0]


def test_a_target_no_round_reports_warns_once():
    settings = cohort.LoopSettings(rounds=3, target=cohort.Target("accuracy", 0.9))
    with pytest.warns(UserWarning, match="target's metric 'accuracy' is not in round 1's record") as caught:
        sim(settings)
    assert len([w for w in caught if "target" in str(w.message)]) == 1
    with pytest.raises(ConfigError, match="evaluate.target_metric is 'accuracy', which this run does not report"):
        sim(settings, reported=["loss"])


def test_a_float16_delta_for_a_float32_model_is_refused():
    class Half(ScriptedClients):
        def __call__(self, cid):
            client = super().__call__(cid)
            fit = client.fit
            client.fit = lambda a, c: cohort.FitResult({k: v.astype(np.float16) for k, v in fit(a, c).delta.items()}, 1)
            return client

    state, _ = sim(client_fn=Half(), settings=cohort.LoopSettings(rounds=1, max_failed_rounds=2))
    assert state.history[0]["status"] == "skipped" and "float16" in state.history[0]["failures"][0]


@pytest.mark.parametrize("arrays, message", [
    ({"w": [1.0, 2.0]}, r"arrays\['w'\] is a list"),
    ({"w": np.array(["a"])}, "expected string names and numeric numpy arrays"),
    ({"w": np.array([np.nan], np.float32)}, "holds NaN or inf"),
])
def test_the_initial_model_is_checked(arrays, message):
    with pytest.raises(ConfigError, match=message):
        cohort.initial_state(cohort.fedavg(), arrays)


def test_the_initial_model_is_copied():
    start = {"w": np.zeros(2, np.float32)}
    state = cohort.initial_state(cohort.fedavg(), start)
    assert state.model["w"] is not start["w"]


def test_a_section_without_settings_says_so_and_case_slips_get_a_suggestion():
    from cohort.config import load_config

    with pytest.raises(ConfigError, match=r"\[scaffold\] takes no settings"):
        load_config(None, ["scaffold.lr=1"])
    with pytest.raises(ConfigError, match="did you mean 'fedprox.mu'"):
        load_config(None, ["fedprox.Mu=1"])


@pytest.mark.parametrize("algorithm", [cohort.fedprox(), cohort.scaffold(), cohort.fedsgd()])
def test_a_plain_fit_client_is_refused_before_round_one_when_the_algorithm_needs_a_trainer(algorithm):
    with pytest.raises(ConfigError, match=rf"{algorithm.name} needs clients with (train|gradient)\(\)"):
        sim(algorithm=algorithm)
