"""SCAFFOLD and FedProx: the heterogeneous-quadratics property, golden values by hand, and the
torch adapter's hooks against plain PyTorch."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from quadratic import QuadraticClient, QuadraticClients
from torch import nn

import cohort
from cohort.algorithms import CONTROL
from cohort.client.torch import TorchClient, to_tensors
from cohort.core.errors import ConfigError
from cohort.server.loop import run
from cohort.server.state import initial_state


def final_x(algorithm, clients, num_clients, rounds=300, dim=3):
    state = initial_state(algorithm, {"x": np.zeros(dim)}, 0)
    state, _ = run(state, algorithm=algorithm, channel=cohort.InProcessChannel(clients, algorithm.client),
                   num_clients=num_clients, settings=cohort.LoopSettings(rounds=rounds))
    return state


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.3, 2.0), min_size=n, max_size=n),
    st.lists(st.lists(st.floats(-5, 5), min_size=2, max_size=2), min_size=n, max_size=n))))
def test_scaffold_reaches_the_true_minimiser_where_fedavg_settles_off_it(problem):
    a, b = problem
    if max(a) - min(a) < 0.5 or np.ptp(np.array(b), axis=0).max() < 1.0:
        return  # nearly homogeneous clients: FedAvg is not biased enough to tell apart
    clients = QuadraticClients(a, b, steps=10, lr=0.1)
    truth = clients.minimiser()
    err = {alg.name: np.abs(final_x(alg, clients, len(a), dim=2).model["x"] - truth).max()
           for alg in (cohort.fedavg(), cohort.fedprox(mu=0.5), cohort.scaffold())}
    assert err["scaffold"] < 1e-6
    assert err["fedavg"] > 1e-3  # client drift: E > 1 local steps on different curvatures
    assert err["fedprox"] < err["fedavg"]


def test_scaffold_one_round_by_hand():
    """Two clients, K = 2 steps of η = 0.1 from x = 0, c = cᵢ = 0 (first round: plain steps)."""
    a, b = [1.0, 3.0], [np.array([2.0]), np.array([-1.0])]
    clients = QuadraticClients(a, b, steps=2, lr=0.1)
    state = final_x(cohort.scaffold(), clients, 2, rounds=1, dim=1)
    ys = []
    for ai, bi in zip(a, b):
        y = 0.0
        for _ in range(2):
            y -= 0.1 * ai * (y - bi[0])
        ys.append(y)
    np.testing.assert_allclose(state.model["x"], [np.mean(ys)], rtol=1e-12)
    # cᵢ⁺ = −(yᵢ − x)/(Kη) = −yᵢ/0.2; c = Σ Δcᵢ / N
    np.testing.assert_allclose(state.groups[CONTROL]["x"], [np.mean([-y / 0.2 for y in ys])], rtol=1e-12)


def test_scaffold_keeps_each_clients_control_variate_in_the_store():
    clients = QuadraticClients([1.0, 2.0, 3.0], [[1.0], [2.0], [3.0]], steps=3)
    algorithm = cohort.scaffold()
    channel = cohort.InProcessChannel(clients, algorithm.client)
    state = initial_state(algorithm, {"x": np.zeros(1)}, 0)
    run(state, algorithm=algorithm, channel=channel, num_clients=3, settings=cohort.LoopSettings(rounds=2, fraction=0.34))
    held = channel.states.ids()
    assert 1 <= len(held) <= 2  # only clients that trained have state, one per round here
    for cid in held:
        assert set(channel.states.get(cid)) == {CONTROL} and channel.states.get(cid)[CONTROL]["x"].shape == (1,)


def test_a_plain_fit_client_is_told_it_cannot_run_scaffold():
    class Plain:
        def fit(self, arrays, config):
            return cohort.FitResult({"x": np.ones(1)}, 1)

        def evaluate(self, arrays, config):
            return cohort.EvaluateResult(0.0, 1)

    algorithm = cohort.scaffold()
    state = initial_state(algorithm, {"x": np.zeros(1)}, 0)
    state, _ = run(state, algorithm=algorithm, channel=cohort.InProcessChannel(lambda c: Plain(), algorithm.client),
                   num_clients=2, settings=cohort.LoopSettings(rounds=1, max_failed_rounds=2))
    assert state.history[0]["status"] == "skipped"
    assert "implements fit() only" in state.history[0]["failures"][0] and "trainer" in state.history[0]["failures"][0]


def test_fedprox_mu_is_checked():
    with pytest.raises(ConfigError, match="fedprox.mu is -1"):
        cohort.fedprox(mu=-1)


def linear_client(x, y, **kw):
    model = nn.Linear(3, 1)
    return TorchClient(model, *to_tensors(x, y), loss="mse", settings=cohort.TrainSettings(batch_size=4, lr=0.05, **kw))


def manual_sgd(x, y, w, b, steps_fn):
    """Plain PyTorch SGD over the same batches, with a per-step gradient correction."""
    model = nn.Linear(3, 1)
    model.load_state_dict({"weight": torch.tensor(w), "bias": torch.tensor(b)})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xt, yt = to_tensors(x, y)
    perm = torch.from_numpy(cohort.core.seeding.rng(0, 1, cohort.core.seeding.Stage.SHUFFLE, 0).permutation(len(x)))
    xs, ys = xt[perm], yt[perm]
    for start in range(0, len(x), 4):
        opt.zero_grad()
        out = model(xs[start:start + 4]).squeeze(-1)
        torch.nn.functional.mse_loss(out, ys[start:start + 4]).backward()
        steps_fn(model)
        opt.step()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("hook", ["proximal", "offset"])
def test_torch_hooks_equal_plain_pytorch_with_the_correction(hook):
    g = np.random.default_rng(1)
    x, y = g.normal(size=(10, 3)).astype(np.float32), g.normal(size=10).astype(np.float32)
    w0, b0 = np.array([[0.3, -0.2, 0.1]], np.float32), np.array([0.05], np.float32)
    arrays = {"weight": w0, "bias": b0}
    offset = {"weight": np.array([[0.5, -1.0, 2.0]], np.float32), "bias": np.array([0.25], np.float32)}
    hooks = cohort.Hooks(proximal_mu=0.7) if hook == "proximal" else cohort.Hooks(gradient_offset=offset)
    t = linear_client(x, y).train(arrays, {"round": 1, "seed": 0}, hooks)

    def correct(model):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.grad += 0.7 * (p - torch.from_numpy(arrays[name])) if hook == "proximal" else torch.from_numpy(offset[name])

    expected = manual_sgd(x, y, w0, b0, correct)
    for k in arrays:
        np.testing.assert_allclose(arrays[k] + t.delta[k], expected[k], rtol=1e-6, atol=1e-7)
    assert t.num_steps == 3 and t.lr == 0.05


def test_torch_client_names_the_types_it_expects():
    with pytest.raises(cohort.DataError, match="x is a ndarray; expected a torch.Tensor"):
        TorchClient(nn.Linear(3, 2), np.zeros((4, 3), np.float32), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(cohort.DataError, match="labels have dtype torch.float32; the cross-entropy loss expects"):
        TorchClient(nn.Linear(3, 2), torch.zeros(4, 3), torch.zeros(4))


def test_quadratic_client_is_a_trainer():
    assert isinstance(QuadraticClient(1.0, [0.0]), cohort.Trainer)


def test_scaffold_with_local_momentum_or_adam_is_refused_before_training():
    from cohort.config import load_config
    from cohort.experiment import build

    for sets in (["client.momentum=0.9"], ["client.optimizer=adam"]):
        with pytest.raises(ConfigError, match="scaffold' needs plain local SGD"):
            build(load_config(None, ["server.algorithm=scaffold", *sets]))


def test_a_diverged_client_keeps_its_previous_control_variate():
    class Diverges(QuadraticClients):
        def __call__(self, cid):
            client = super().__call__(cid)
            if cid == 0:
                train = client.train
                client.train = lambda a, c, h: (lambda t: cohort.Trained({"x": t.delta["x"] * np.nan}, t.num_examples,
                                                                          t.num_steps, t.lr))(train(a, c, h)) \
                    if c["round"] == 2 else train(a, c, h)
            return client

    clients = Diverges([1.0, 2.0], [[1.0], [3.0]], steps=3)
    algorithm = cohort.scaffold()
    channel = cohort.InProcessChannel(clients, algorithm.client)
    state = initial_state(algorithm, {"x": np.zeros(1)}, 0)
    state, _ = run(state, algorithm=algorithm, channel=channel, num_clients=2, settings=cohort.LoopSettings(rounds=4))
    assert state.history[1]["clients_succeeded"] == 1 and "not finite" in state.history[1]["failures"][0]
    assert [r["clients_succeeded"] for r in state.history[2:]] == [2, 2]  # it is back the round after
    assert np.isfinite(channel.states.get(0)[CONTROL]["x"]).all()
