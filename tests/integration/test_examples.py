"""Every example config in examples/ runs (one round, a small cohort), so none of them rots; the Python
examples are run by their own tests (test_numpy_example.py, tests/frameworks/test_hf.py)."""

from pathlib import Path

import pytest

from cohort.config import load_config
from cohort.experiment import run

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples").rglob("*.toml"))


def test_the_examples_are_all_here():
    names = {p.relative_to(ROOT / "examples").as_posix() for p in CONFIGS}
    assert {"keras_binary.toml", "sklearn_sgd.toml", "hospitals/hospitals.toml", "mnist_2nn_iid.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT / "examples").as_posix())
def test_an_example_runs_one_short_round(path, data_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name their files from the project folder
    sets = ["rounds=1", "output.progress=false", f'data.dir="{data_dir}"', "data.download=false"]
    config = load_config(path, sets)
    if config.server.fraction * config.data.num_clients > 2:  # a short round: two clients
        sets.append(f"server.fraction={2 / config.data.num_clients}")
    config = load_config(path, sets)
    result = run(config, write=False)
    assert result.stopped_by == "rounds" and result.state.round == 1
    record = result.state.history[-1]
    assert record["status"] == "ok" and record["clients_succeeded"] >= 1
    assert any(k in record for k in ("accuracy", "r2", "federated_accuracy", "federated_r2"))
