"""The keras framework: Keras 3 on the torch backend, the user's own compiled model from
``[model] factory``; a federated run equals a hand-written Keras FedAvg loop on the same data and seeds."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

from cohort.config import load_config  # noqa: E402
from cohort.core.errors import ConfigError  # noqa: E402
from cohort.core.seeding import Stage, rng, torch_seed  # noqa: E402
from cohort.experiment import build, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "keras_binary.toml"
sys.path.insert(0, str(ROOT / "examples"))
import keras_models  # noqa: E402


def short(*sets, rounds=3):
    return load_config(EXAMPLE, [f"rounds={rounds}", "output.progress=false", "data.num_clients=3",
                                 f"model.factory='{ROOT / 'examples' / 'keras_models.py'}:binary_classifier'", *sets])


def test_a_keras_run_equals_a_hand_written_keras_fedavg_loop():
    config = short("client.batch_size=16", "client.epochs=2")
    result = run(config, write=False)
    exp = build(config)
    clients = [(exp.train.x[exp.partition[c]].astype(np.float32), exp.train.y[exp.partition[c]]) for c in range(3)]

    # the loop a Keras user writes by hand: the same model, a fresh optimizer per client, each epoch in the order
    # cohort draws for that client and round, the mean weighted by examples
    keras.utils.clear_session()
    keras.utils.set_random_seed(torch_seed(0, 0, Stage.INIT) % 2**32)
    model = keras_models.binary_classifier(tuple(exp.train.feature_shape), 2)
    global_weights = model.get_weights()
    for r in range(1, 4):
        trained, sizes = [], []
        for cid, (x, y) in enumerate(clients):
            model.set_weights(global_weights)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="binary_crossentropy", metrics=["accuracy"])
            keras.utils.set_random_seed(torch_seed(0, r, Stage.TORCH, cid) % 2**32)
            order = rng(0, r, Stage.SHUFFLE, cid)
            for _ in range(2):
                perm = order.permutation(len(x))
                model.fit(x[perm], y[perm], epochs=1, batch_size=16, shuffle=False, verbose=0)
            trained.append(model.get_weights())
            sizes.append(len(x))
        global_weights = [sum(n * w[i] for n, w in zip(sizes, trained)) / sum(sizes) for i in range(len(global_weights))]

    ours = result.state.model
    assert list(ours) == [v.path for v in model.weights] == ["sequential/dense/kernel", "sequential/dense/bias",
                                                             "sequential/dense_1/kernel", "sequential/dense_1/bias"]
    moved = 0.0
    for (name, a), b in zip(ours.items(), global_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
        moved = max(moved, float(np.abs(b - exp.initial_state().model[name]).max()))
    assert moved > 1e-3  # training really moved the weights: the comparison is not of two initial models
    history = result.state.history
    assert history[-1]["accuracy"] > history[0]["accuracy"] and history[-1]["accuracy"] > 0.85


def test_the_worker_processes_give_the_same_bits():
    inproc = run(short(rounds=2), write=False).state.model
    pool = run(short("simulation.backend='processes'", "simulation.workers=2", rounds=2), write=False).state.model
    for k in inproc:
        assert inproc[k].tobytes() == pool[k].tobytes(), k


def test_the_example_runs_from_the_command_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cohort.cli", "run", str(EXAMPLE.relative_to(ROOT)), "--out", str(tmp_path),
                        "--no-progress", "--set", "rounds=4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "model examples/keras_models.py:binary_classifier (keras)" in r.stdout
    assert "stopped by rounds after 4 rounds" in r.stdout


BAD = Path(__file__).with_name("keras_bad_models.py")


@pytest.mark.parametrize("sets, match", [
    ([f"model.factory='{BAD}:not_compiled'"], "not compiled; call model.compile"),
    ([f"model.factory='{BAD}:not_a_model'"], "returned a dict; the keras framework needs a keras.Model"),
    ([f"model.factory='{BAD}:three_outputs'"], r"outputs of shape \(3,\); the data needs \(2,\) or \(1,\) with a sigmoid"),
    ([f"model.factory='{BAD}:missing'"], "has no function 'missing'"),
    (["model.factory='no/such/file.py:f'"], "no file"),
    (["model.factory='no_such_module_here:f'"], "cannot import 'no_such_module_here'"),
    (["model.factory='just text'"], "expected 'module:function'"),
    (["model.factory=''"], "builds your own model: set model.factory"),
    (["server.algorithm='fedprox'"], "with model.framework = 'keras' use 'fedavg' or 'fedper'"),
])
def test_bad_keras_settings_are_refused_before_training(sets, match):
    with pytest.raises(ConfigError, match=match):
        build(short(*sets))


def test_fedper_keeps_the_keras_head_on_the_clients():
    exp = build(short("server.algorithm='fedper'", "evaluate.centralized=false"))
    state = exp.initial_state()
    assert set(state.groups["personal_init"]) == {"sequential/dense_1/kernel", "sequential/dense_1/bias"}
    assert set(state.model) == {"sequential/dense/kernel", "sequential/dense/bias"}


def test_the_keras_client_says_what_it_cannot_do():
    exp = build(short())
    client = exp.client_fn()(0)
    from cohort.client.base import Hooks

    with pytest.raises(ConfigError, match="needs model.framework = 'torch'"):
        client.train(exp.initial_state().model, {}, Hooks(proximal_mu=0.1))
    with pytest.raises(ConfigError, match="FedSGD"):
        client.gradient(exp.initial_state().model, {})
    with pytest.raises(ConfigError, match="missing"):
        client.evaluate({"sequential/dense/kernel": np.zeros((30, 128), np.float32)}, {})


def test_the_python_api_federates_a_compiled_keras_model():
    import cohort

    exp = build(short())
    model = keras_models.binary_classifier(tuple(exp.train.feature_shape), 2)
    data = [(exp.train.x[exp.partition[c]].astype(np.float32), exp.train.y[exp.partition[c]]) for c in range(3)]
    test_x, test_y = exp.test.x.astype(np.float32), exp.test.y

    def evaluate(arrays):
        from cohort.client.keras import set_weights

        set_weights(model, arrays)
        return model.evaluate(test_x, test_y, verbose=0, return_dict=True)

    start = cohort.keras_weights(model)
    state, stopped = cohort.simulate(lambda cid: cohort.KerasClient(model, *data[cid], settings=cohort.TrainSettings(batch_size=16)),
                                     num_clients=3, arrays=start, settings=cohort.LoopSettings(rounds=4), evaluate=evaluate)
    assert stopped == "rounds"
    assert state.history[-1]["accuracy"] > state.history[0]["accuracy"] and state.history[-1]["accuracy"] > 0.85
