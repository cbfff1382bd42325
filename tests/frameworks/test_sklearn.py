"""The sklearn framework: SGDClassifier, SGDRegressor and LogisticRegression federated through coef_ and
intercept_, with shapes from the declared classes, sklearn's own scorers, and a hand-checked round."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier

from cohort.client.base import Hooks
from cohort.config import load_config
from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng
from cohort.experiment import build, run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sklearn_sgd.toml"
HERE = Path(__file__).resolve().parent


def short(*sets, rounds=5):
    return load_config(EXAMPLE, [f"rounds={rounds}", "output.progress=false", *sets])


def test_a_round_equals_partial_fit_by_hand_and_accuracy_rises():
    config = short("data.partition='iid'", "data.num_clients=3", "client.epochs=2", rounds=1)
    exp = build(config)
    state = run(config, write=False).state
    coefs, intercepts, sizes = [], [], []
    for cid in range(3):
        idx = exp.partition[cid]
        x, y = exp.train.x[idx].astype(np.float64), exp.train.y[idx]
        est = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01, alpha=0.0, shuffle=False)
        est.coef_, est.intercept_, est.classes_ = np.zeros((1, x.shape[1])), np.zeros(1), np.arange(2)
        order = rng(0, 1, Stage.SHUFFLE, cid)
        for _ in range(2):
            perm = order.permutation(len(x))
            est.partial_fit(x[perm], y[perm], classes=np.arange(2))
        coefs.append(est.coef_), intercepts.append(est.intercept_), sizes.append(len(x))
    w = np.array(sizes) / sum(sizes)
    np.testing.assert_allclose(state.model["coef_"], sum(wi * c for wi, c in zip(w, coefs)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state.model["intercept_"], sum(wi * c for wi, c in zip(w, intercepts)), rtol=1e-10, atol=1e-12)
    assert np.abs(state.model["coef_"]).max() > 1e-3

    history = run(short(rounds=8), write=False).state.history
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] >= 0.9
    assert {"accuracy", "f1_macro", "federated_accuracy", "federated_f1_macro"} <= set(history[-1])


def test_a_client_without_a_class_sends_arrays_every_client_agrees_with():
    """Ten digits declared, a client holding three of them: coef_ is still (10, 784)."""
    config = load_config(None, ["data.dataset='mnist'", f"data.dir='{ROOT.parent / 'shared' / 'data'}'",
                                "data.num_clients=200", "data.partition='shards'", "data.shards_per_client=1",
                                "model.framework='sklearn'", "model.name='sgd_classifier'", "output.progress=false",
                                "evaluate.federated_fraction=0", "data.holdout_fraction=0"])
    exp = build(config)
    client = exp.client_fn()(0)
    assert len(np.unique(client.y)) < 10
    start = exp.initial_state().model
    assert start["coef_"].shape == (10, 784) and start["intercept_"].shape == (10,)
    t = client.train(start, {"round": 1, "seed": 0}, Hooks())
    assert t.delta["coef_"].shape == (10, 784) and np.isfinite(t.delta["coef_"]).all()


def test_logistic_regression_and_sgd_regressor():
    logreg = run(short("model.name='logistic_regression'", "data.partition='iid'", "data.num_clients=3"), write=False)
    assert logreg.state.history[-1]["accuracy"] >= 0.9
    reg = run(load_config(None, ["data.dataset='diabetes'", "model.framework='sklearn'", "model.name='sgd_regressor'",
                                 "rounds=5", "output.progress=false", "data.partition='iid'", "client.epochs=3"]), write=False)
    hist = reg.state.history
    assert reg.state.model["coef_"].shape == (10,) and hist[-1]["r2"] > hist[0]["r2"] and hist[-1]["r2"] > 0.3
    assert "mae" in hist[-1] and hist[-1]["mae"] > 0


def test_logistic_regression_on_a_client_that_lacks_a_class_fails_that_client_saying_why():
    exp = build(short("model.name='logistic_regression'", "data.partition='shards'", "data.shards_per_client=1"))
    lacking = next(c for c in range(exp.num_clients) if len(np.unique(exp.train.y[exp.partition[c]])) < 2)
    with pytest.raises(DataError, match="LogisticRegression's solver needs every class"):
        exp.client_fn()(lacking).train(exp.initial_state().model, {"round": 1}, Hooks())


def test_a_factory_estimator_trains_with_its_own_parameters():
    for name in ("hinge_sgd", "tuned"):  # tuned(alpha=..., eta0=...) is called with no arguments, not (shape, outputs)
        spec = f"{HERE / 'sklearn_models.py'}:{name}"
        result = run(short(f"model.factory='{spec}'", "data.partition='iid'"), write=False)
        assert result.state.history[-1]["accuracy"] >= 0.9, name


@pytest.mark.parametrize("sets, match", [
    ([f"model.factory='{HERE / 'sklearn_models.py'}:random_forest'"], "returned a RandomForestClassifier"),
    ([f"model.factory='{HERE / 'sklearn_models.py'}:regressor'"], "does not fit a classification dataset"),
    (["model.name='sgd_regressor'"], "needs a regression dataset"),
    (["model.name='svm'"], "expected one of sgd_classifier, sgd_regressor, logistic_regression"),
    (["server.algorithm='scaffold'"], "with model.framework = 'sklearn' use 'fedavg'"),
    (["client.ldp=true"], "client.ldp"),
])
def test_bad_sklearn_settings_are_refused_before_training(sets, match):
    with pytest.raises(ConfigError, match=match):
        build(short(*sets))


def test_the_example_runs_from_the_command_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cohort.cli", "run", str(EXAMPLE), "--out", str(tmp_path),
                        "--no-progress", "--set", "rounds=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "model sgd_classifier (sklearn)" in r.stdout and "stopped by rounds after 3 rounds" in r.stdout
