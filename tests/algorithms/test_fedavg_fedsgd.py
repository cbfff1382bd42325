"""FedSGD and FedAvg end to end on linear regression, against gradients computed by hand."""

import numpy as np
import pytest
from torch import nn

from cohort.algorithms import fedavg, fedsgd
from cohort.channel import InProcessChannel
from cohort.client.torch import TorchClientFactory, TrainSettings
from cohort.data import ArrayDataset, Partition
from cohort.server.loop import LoopSettings, run
from cohort.server.state import initial_state

START = {"weight": np.array([[0.5, -0.25, 1.0]], np.float32), "bias": np.array([0.2], np.float32)}


def regression_data():
    g = np.random.default_rng(7)
    x = g.normal(size=(30, 3)).astype(np.float32)
    y = (x @ np.array([1.0, 2.0, -1.0]) + 0.5 + 0.1 * g.normal(size=30)).astype(np.float32)
    parts = Partition.from_lists([np.arange(0, 5), np.arange(5, 17), np.arange(17, 30)])  # 5, 12, 13 examples
    return ArrayDataset(x, y, "regression"), parts


def one_round(algorithm, settings, rounds=1):
    ds, parts = regression_data()
    factory = TorchClientFactory(lambda: nn.Linear(3, 1), ds, parts, settings=settings)
    state = initial_state(algorithm, dict(START), seed=0)
    state, _ = run(state, algorithm=algorithm, channel=InProcessChannel(factory, algorithm.client), num_clients=3,
                   settings=LoopSettings(rounds=rounds, fraction=1.0))
    return state.model


def mse_gradient(x, y, w, b):
    r = x.astype(np.float64) @ w + b - y
    return 2 / len(x) * r @ x, 2 / len(x) * r.sum()


@pytest.mark.parametrize("weighted", [True, False])
def test_fedsgd_step_is_the_server_lr_times_the_mean_gradient(weighted):
    ds, parts = regression_data()
    grads = [mse_gradient(ds.x[parts[c]], ds.y[parts[c]], START["weight"][0], START["bias"][0]) for c in range(3)]
    weights = np.array([5, 12, 13] if weighted else [1, 1, 1], np.float64)
    gw = sum(w * g[0] for w, g in zip(weights, grads)) / weights.sum()
    gb = sum(w * g[1] for w, g in zip(weights, grads)) / weights.sum()
    new = one_round(fedsgd(server_lr=0.3, weighted=weighted), TrainSettings(batch_size=4))
    np.testing.assert_allclose(new["weight"][0], START["weight"][0] - 0.3 * gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["bias"][0], START["bias"][0] - 0.3 * gb, rtol=1e-5, atol=1e-6)


def test_fedavg_with_one_full_batch_step_equals_fedsgd():
    """McMahan et al.: FedAvg with E = 1 and B = ∞ is FedSGD (client lr η, server lr 1 ≡ server lr η)."""
    a = one_round(fedavg(), TrainSettings(epochs=1, batch_size=0, lr=0.05), rounds=3)
    b = one_round(fedsgd(server_lr=0.05), TrainSettings(batch_size=0), rounds=3)
    for k in START:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_fedavg_with_server_lr_scales_the_step():
    plain = one_round(fedavg(), TrainSettings(batch_size=4, lr=0.05))
    half = one_round(fedavg(server_lr=0.5), TrainSettings(batch_size=4, lr=0.05))
    for k in START:
        np.testing.assert_allclose(half[k] - START[k], 0.5 * (plain[k] - START[k]), rtol=1e-5, atol=1e-7)


def test_fedsgd_descends():
    ds, _ = regression_data()

    def loss(arrays):
        return float(np.mean((ds.x @ arrays["weight"][0] + arrays["bias"][0] - ds.y) ** 2))

    assert loss(one_round(fedsgd(server_lr=0.1), TrainSettings(batch_size=0), rounds=20)) < 0.2 * loss(START)
