"""Personalization: FedPer's personal layers never travel and stay each client's own; Ditto's personal
model reaches its closed-form optimum on quadratics; both are evaluated per client beside the global
model; both train a real torch model and beat the global one on a label-skewed split."""

import json

import numpy as np
import pytest
from quadratic import QuadraticClients

import cohort
from cohort.algorithms import ALGORITHMS, PERSONAL, PERSONAL_INIT, FedPerSettings, ditto, fedper
from cohort.channel.inprocess import InProcessChannel
from cohort.client.base import Trained
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.core.types import MODEL, EvaluateResult, Instruction, Message, Reply
from cohort.experiment import build, run as run_experiment
from cohort.recipe import algorithm_settings
from cohort.server.loop import run
from cohort.server.state import initial_state


# ------------------------------------------------------------------------------------------------ Ditto

def test_ditto_personal_models_reach_their_closed_form_optimum():
    """With fᵢ(v) = ½aᵢ‖v − bᵢ‖² and the proximal pull λ/2‖v − w‖², client i's personal model settles
    at (aᵢbᵢ + λw)/(aᵢ + λ), where w is the global model; λ = 0 leaves each client at its own bᵢ."""
    a = [0.5, 1.0, 2.0]
    b = [np.array([2.0, -1.0]), np.array([-3.0, 0.5]), np.array([1.0, 4.0])]
    clients = QuadraticClients(a, b, steps=10, lr=0.1)
    for lam in (0.0, 0.5, 3.0):
        algorithm = ditto(lam=lam)
        channel = InProcessChannel(clients, algorithm.client)
        state, _ = run(initial_state(algorithm, {"x": np.zeros(2)}, 0), algorithm=algorithm, channel=channel,
                       num_clients=3, settings=cohort.LoopSettings(rounds=200))
        w = state.model["x"]
        fedavg_state, _ = run(initial_state(cohort.fedavg(), {"x": np.zeros(2)}, 0), algorithm=cohort.fedavg(),
                              channel=InProcessChannel(clients, cohort.fedavg().client), num_clients=3,
                              settings=cohort.LoopSettings(rounds=200))
        np.testing.assert_array_equal(w, fedavg_state.model["x"])  # the global model is FedAvg's, bit for bit
        for i in range(3):
            v = channel.states.get(i)[PERSONAL]["x"]
            np.testing.assert_allclose(v, (a[i] * b[i] + lam * w) / (a[i] + lam), rtol=1e-9, atol=1e-9)


class Recorder:
    """A trainer that notes every call and moves each array by a fixed step per client."""

    calls: list = []

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def train(self, arrays, config, hooks):
        Recorder.calls.append(("train", self.cid, dict(arrays), dict(config), hooks))
        return Trained({k: np.full_like(v, 0.1 * (self.cid + 1)) for k, v in arrays.items()}, 10 * (self.cid + 1), 1, 0.1,
                       {"train_loss": 1.0})

    def gradient(self, arrays, config):
        raise AssertionError("not used")

    def evaluate(self, arrays, config):
        Recorder.calls.append(("evaluate", self.cid, dict(arrays), dict(config), None))
        return EvaluateResult(float(sum(v.sum() for v in arrays.values())), 5, {"accuracy": float(self.cid)})


def test_ditto_trains_the_personal_model_towards_the_received_global_one():
    Recorder.calls = []
    half = ditto(lam=0.7, personal_epochs=3).client
    w = {"x": np.ones(2, np.float32)}
    reply, state = half.handle(Message("fit", {MODEL: w}, {"round": 1, "epochs": 1}), Recorder(0), None)
    (_, _, start_g, cfg_g, hooks_g), (_, _, start_p, cfg_p, hooks_p) = Recorder.calls
    assert hooks_g.plain and cfg_g["epochs"] == 1  # the global model: FedAvg's plain local steps
    assert hooks_p.proximal_mu == 0.7 and hooks_p.anchor is w and cfg_p["epochs"] == 3
    np.testing.assert_array_equal(start_p["x"], w["x"])  # first round: the personal model starts from the global one
    assert set(reply.arrays) == {MODEL} and reply.num_examples == 10
    np.testing.assert_allclose(state[PERSONAL]["x"], 1.1)
    assert state[PERSONAL]["x"].dtype == np.float32
    # the next round starts the personal model from the kept one, not from the new global model
    Recorder.calls = []
    w2 = {"x": np.full(2, 5.0, np.float32)}
    _, state2 = half.handle(Message("fit", {MODEL: w2}, {"round": 2}), Recorder(0), state)
    np.testing.assert_allclose(Recorder.calls[1][2]["x"], 1.1)
    assert Recorder.calls[1][4].anchor is w2
    np.testing.assert_allclose(state2[PERSONAL]["x"], 1.2, rtol=1e-6)
    # evaluation: the global model's score, and the personal model's beside it on the same data
    Recorder.calls = []
    result, same = half.handle(Message("evaluate", {MODEL: w2}, {"round": 2}), Recorder(0), state2)
    assert same is state2
    assert result.loss == pytest.approx(10.0) and result.metrics["personal_loss"] == pytest.approx(2.4, rel=1e-6)
    assert {"accuracy", "personal_accuracy"} <= set(result.metrics)


def test_ditto_keeps_other_state_and_refuses_a_diverged_personal_model():
    half = ditto(lam=0.1).client
    other = {"residual": {"x": np.zeros(2)}}

    class Diverging(Recorder):
        def train(self, arrays, config, hooks):
            t = super().train(arrays, config, hooks)
            return t if hooks.plain else Trained({"x": np.full(2, np.nan)}, 10, 1, 0.1)

    _, state = half.handle(Message("fit", {MODEL: {"x": np.ones(2)}}, {}), Recorder(1), other)
    assert set(state) == {"residual", PERSONAL}
    # the personal steps diverge: the client keeps its last personal model, and its global update still goes up
    reply, after = half.handle(Message("fit", {MODEL: {"x": np.ones(2)}}, {}), Diverging(1), state)
    assert after[PERSONAL] is state[PERSONAL] and reply.metrics["personal_diverged"] == 1.0
    np.testing.assert_allclose(reply.arrays[MODEL]["x"], 0.2)
    with pytest.raises(ConfigError, match="do not match the model"):
        half.handle(Message("fit", {MODEL: {"y": np.ones(2)}}, {}), Recorder(1), state)


@pytest.mark.parametrize("kwargs, match", [
    ({"lam": -1}, "ditto.lam"), ({"lam": float("inf")}, "ditto.lam"), ({"lam": True}, "ditto.lam"),
    ({"personal_epochs": -1}, "ditto.personal_epochs"), ({"personal_epochs": 1.5}, "ditto.personal_epochs"),
])
def test_ditto_settings_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ditto(**kwargs)


# ----------------------------------------------------------------------------------------------- FedPer

def layered_model():
    return {"0.weight": np.zeros((3, 2), np.float32), "0.bias": np.zeros(3, np.float32),
            "2.weight": np.zeros((2, 3), np.float32), "2.bias": np.zeros(2, np.float32)}


def test_fedper_splits_the_last_layer_off_by_default_or_the_named_ones():
    shared, personal = FedPerSettings().split(layered_model())
    assert set(shared) == {"0.weight", "0.bias"} and set(personal) == {"2.weight", "2.bias"}
    shared, personal = FedPerSettings(personal=("0",)).split(layered_model())
    assert set(personal) == {"0.weight", "0.bias"}
    with pytest.raises(ConfigError, match=r"names \['head'\], which the model does not have; its layers are \['0', '2'\]"):
        FedPerSettings(personal=("head",)).split(layered_model())
    with pytest.raises(ConfigError, match="at least one shared layer"):
        FedPerSettings(personal_layers=2).split(layered_model())
    for bad in ({"personal": ("",)}, {"personal": "2"}, {"personal_layers": 0}, {"personal_layers": True}):
        with pytest.raises(ConfigError, match="fedper.personal"):
            FedPerSettings(**bad)


def test_fedper_finds_keras_layers_by_path():
    keras_like = {"sequential/dense/kernel": np.zeros((3, 2)), "sequential/dense/bias": np.zeros(2),
                  "sequential/dense_1/kernel": np.zeros((2, 1)), "sequential/dense_1/bias": np.zeros(1)}
    for settings in (FedPerSettings(), FedPerSettings(personal=("dense_1",)), FedPerSettings(personal=("sequential/dense_1",))):
        shared, personal = settings.split(keras_like)
        assert set(personal) == {"sequential/dense_1/kernel", "sequential/dense_1/bias"}, settings
    nested = {"layers.2.weight": np.zeros(2), "layers.12.weight": np.zeros(2)}
    assert set(FedPerSettings(personal=("2",)).split(nested)[1]) == {"layers.2.weight"}


def test_fedper_personal_layers_never_travel_and_stay_each_clients_own():
    """Three clients, each moving every array by 0.1·(i + 1) per round: after R rounds the shared layers
    moved by R times the example-weighted mean step, and each client's head by its own R·0.1·(i + 1)."""
    Recorder.calls = []
    algorithm = fedper()
    sent = []

    class Watching(InProcessChannel):
        def _received(self, cid, outcome, before, after):
            sent.append(outcome)
            return super()._received(cid, outcome, before, after)

    channel = Watching(Recorder, algorithm.client)
    rounds = 4
    state, _ = run(initial_state(algorithm, layered_model(), 0), algorithm=algorithm, channel=channel, num_clients=3,
                   settings=cohort.LoopSettings(rounds=rounds))
    assert set(state.groups) == {MODEL, PERSONAL_INIT} and set(state.model) == {"0.weight", "0.bias"}
    for reply in sent:  # up: only the shared layers
        assert isinstance(reply, Reply) and set(reply.arrays) == {MODEL} and set(reply.arrays[MODEL]) == {"0.weight", "0.bias"}
    for name, a in state.groups[PERSONAL_INIT].items():  # the initial head never changes on the server
        np.testing.assert_array_equal(a, layered_model()[name])
    mean_step = sum(0.1 * (i + 1) * 10 * (i + 1) for i in range(3)) / sum(10 * (i + 1) for i in range(3))
    np.testing.assert_allclose(state.model["0.weight"], rounds * mean_step, rtol=1e-6)
    for i in range(3):
        head = channel.states.get(i)[PERSONAL]
        assert set(head) == {"2.weight", "2.bias"}
        np.testing.assert_allclose(head["2.bias"], rounds * 0.1 * (i + 1), rtol=1e-6)
    # each fit trained the whole model: the shared layers received with the client's own head
    last = [c for c in Recorder.calls if c[0] == "train" and c[1] == 2][-1]
    np.testing.assert_allclose(last[2]["2.bias"], (rounds - 1) * 0.3, rtol=1e-6)
    # evaluation: the client's complete model, reported as its personal score too
    result, _ = algorithm.client.handle(Message("evaluate", state.groups, {}), Recorder(2), channel.states.get(2))
    assert result.metrics["personal_loss"] == result.loss
    assert result.loss == pytest.approx(sum(v.sum() for v in state.model.values()) + rounds * 0.3 * 8, rel=1e-5)


def test_fedper_refuses_a_message_without_its_groups():
    with pytest.raises(ConfigError, match="is the server running fedper"):
        fedper().client.handle(Message("fit", {MODEL: layered_model()}, {}), Recorder(0), None)


# ------------------------------------------------------------------------------------------- configs

def test_settings_reach_a_deployed_client_through_json():
    for name, sets in (("fedper", ["fedper.personal=['2']"]), ("ditto", ["ditto.lam=0.5", "ditto.personal_epochs=2"])):
        config = load_config(None, [f"server.algorithm={name}", *sets])
        half = ALGORITHMS[name](**json.loads(json.dumps(algorithm_settings(config)))).client  # what the Welcome carries
        assert half == ALGORITHMS[name](**algorithm_settings(config)).client or name == "fedper"
    assert load_config(None, ["server.algorithm=ditto", "ditto.lam=0.5"]).ditto.lam == 0.5


@pytest.mark.parametrize("sets, match", [
    (["server.algorithm=fedper"], "evaluate.centralized = false"),
    (["server.algorithm=ditto", "client.ldp=true"], "personal model that never leaves"),
    (["server.algorithm=fedper", "fedper.personal=2"], "expected a list of strings"),
    (["server.algorithm=fedper", "fedper.personal=[1]"], "expected a list of strings"),
    (["server.algorithm=fedper", "evaluate.centralized=false", "model.name=logistic_regression"], "at least one shared layer"),
])
def test_bad_personalization_configs_are_refused_clearly(sets, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        config = load_config(None, [f"output.dir={tmp_path}", *sets])
        experiment = build(config)
        experiment.initial_state()


# --------------------------------------------------------------------------------------- a torch run

def test_fedper_and_ditto_beat_the_global_model_on_their_own_clients(tmp_path):
    """Breast cancer, 10 clients, Dirichlet α = 0.1 over its two classes: most clients hold nearly one
    class. The personal models score higher on each client's held-out data than the global model does."""
    base = [f"output.dir={tmp_path}", "output.progress=false", "rounds=15", "model.name=mlp", "data.partition=dirichlet",
            "data.alpha=0.1", "data.holdout_fraction=0.3", "evaluate.federated_fraction=1.0", "client.lr=0.05"]
    last = {}
    for name, sets in (("fedavg", []), ("ditto", ["server.algorithm=ditto", "ditto.lam=0.1"]),
                       ("fedper", ["server.algorithm=fedper", "evaluate.centralized=false"])):
        result = run_experiment(load_config(None, [*base, f"name={name}", *sets]))
        assert result.stopped_by == "rounds"
        last[name] = result.state.history[-1]
    assert last["ditto"]["federated_accuracy"] == pytest.approx(last["fedavg"]["federated_accuracy"], abs=1e-9)
    for name in ("ditto", "fedper"):
        assert last[name]["federated_personal_accuracy"] > last["fedavg"]["federated_accuracy"] + 0.01, last
    assert last["fedper"]["federated_personal_accuracy"] == last["fedper"]["federated_accuracy"]
