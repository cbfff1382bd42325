"""The README's Python-API example: a NumPy-only client through cohort.simulate."""

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "numpy_client.py"


def test_numpy_federation_recovers_the_true_model(capsys):
    spec = importlib.util.spec_from_file_location("numpy_client_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = module.main(rounds=60)
    np.testing.assert_allclose(state.arrays["w"], [3.0, -2.0], atol=0.05)
    assert abs(float(state.arrays["b"]) - 1.0) < 0.05
    assert state.history[-1]["federated_loss"] < 0.01 < state.history[0]["federated_loss"]
    assert all(r["clients_sampled"] == 4 for r in state.history)
    assert "after 60 rounds" in capsys.readouterr().out
