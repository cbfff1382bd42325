"""LEAF's Synthetic(α, β), generated lazily: each client's data is a function of (seed, client id), the
same on every call and in every process, different between clients; a federation of 100 million
registered clients costs nothing until a client is sampled, and runs from its TOML."""

import pickle
import sys
import time
from pathlib import Path

import numpy as np

from cohort.config import load_config
from cohort.data.synthetic import SyntheticFederation
from cohort.experiment import build, run

ROOT = Path(__file__).resolve().parents[2]


def test_a_client_is_deterministic_and_its_own():
    fed = SyntheticFederation(1_000_000, alpha=1.0, beta=1.0, seed=3)
    x1, y1 = fed.examples(123_456)
    x2, y2 = pickle.loads(pickle.dumps(fed)).examples(123_456)  # as a worker process would rebuild it
    assert x1.tobytes() == x2.tobytes() and y1.tobytes() == y2.tobytes()
    assert x1.shape == (fed.size(123_456), 60) and x1.dtype == np.float32 and 0 <= y1.min() and y1.max() < 10
    x3, _ = fed.examples(123_457)
    assert not np.allclose(x1[:5], x3[:5])
    assert SyntheticFederation(1_000_000, seed=4).examples(123_456)[0].tobytes() != x1.tobytes()  # the seed matters
    (tr, ty), (hx, hy) = fed.split(7)
    assert len(hx) == round(0.2 * fed.size(7)) and np.array_equal(np.concatenate([tr, hx]), fed.examples(7)[0])


def test_alpha_and_beta_control_how_clients_differ():
    def spread(alpha, beta):
        fed = SyntheticFederation(1000, alpha=alpha, beta=beta, seed=0)
        return np.std([fed.examples(k)[0].mean() for k in range(200)])
    assert spread(0.0, 0.0) < spread(1.0, 1.0) < spread(1.0, 10.0)


def test_a_hundred_million_registered_clients_cost_nothing_until_sampled():
    t = time.perf_counter()
    exp = build(load_config(ROOT / "examples" / "synthetic_million.toml", ["data.num_clients=100000000",
                                                                          "server.fraction=0.00001"]))
    assert exp.num_clients == 100_000_000 and exp.cohort_size == 1000
    assert time.perf_counter() - t < 30
    client = exp.client_fn()(99_999_999)
    assert client.x.shape[1] == 60 and len(client.x) + len(client.test[0]) == client.x.shape[0] + client.test[0].shape[0]
    assert sys.getsizeof(exp.partition) < 1000  # no per-client arrays


def test_the_example_runs_and_its_clients_learn():
    result = run(load_config(ROOT / "examples" / "synthetic_million.toml",
                             ["rounds=2", "data.num_clients=20000", "server.fraction=0.01", "output.progress=false"]), write=False)
    h = result.state.history
    assert h[-1]["clients_succeeded"] == 200 and "federated_accuracy" in h[-1]
    assert h[-1]["train_loss"] < 2.3  # below chance's log 10: the local models learn


def test_generated_clients_refuse_what_cannot_serve_them():
    import pytest

    from cohort.core.errors import ConfigError

    for sets in (["model.framework=sklearn", "model.name=sgd_classifier"], ["attack.kind=label_flip", "attack.fraction=0.1"]):
        with pytest.raises(ConfigError, match="takes model.framework = 'torch' and no attack.kind = 'label_flip'"):
            build(load_config(ROOT / "examples" / "synthetic_million.toml", ["data.num_clients=1000", *sets]))
