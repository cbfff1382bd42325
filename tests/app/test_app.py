"""An app (cohort.App) in simulation: its settings reach the server's functions and every client, a
client's context state outlives its rounds (and a SIGKILL), the server's functions are the app's, and
the habits of other frameworks are pointed out."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cohort.app import App, load_app
from cohort.cli import main
from cohort.core.arrays import load_safetensors
from cohort.core.errors import ConfigError
from processes import ENV, TESTS, cohort as cohort_cmd, end_all


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def run_app(tmp_path, spec, *sets, name="counting"):
    assert main(["run", "--app", spec, "--out", str(tmp_path), "--no-progress", "--quiet",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    (folder,) = tmp_path.glob(f"{name}-*")
    return folder


def test_settings_reach_fit_config_and_every_client(tmp_path):
    folder = run_app(tmp_path, "counting_app:app", "app.lr=0.25", "app.scale=3")
    rs = [r for r in records(folder) if r["round"] >= 1]
    assert [r["round"] for r in rs] == [1, 2, 3, 4]
    # fit_config halves the app's lr after round 2; every client of a round saw the round's record
    assert [r["train_lr"] for r in rs] == [0.25, 0.25, 0.125, 0.125]
    assert all(r["train_scale"] == 3.0 and r["train_name_ok"] == 1.0 for r in rs)
    # the server's evaluation is the app's: its settings, the round it is told, and the model
    model = load_safetensors(folder / "model.safetensors")
    assert rs[-1]["distance"] == pytest.approx(float(np.linalg.norm(model["w"])) * 3)
    assert [r["round_seen"] for r in rs] == [1, 2, 3, 4]
    assert (folder / "app.txt").read_text().strip() == "counting_app:app"
    assert "app = " not in (folder / "config.toml").read_text() and "[app]" in (folder / "config.toml").read_text()


def test_context_state_outlives_rounds(tmp_path):
    folder = run_app(tmp_path, "counting_app:app", "server.fraction=1.0", "rounds=3")
    rs = [r for r in records(folder) if r["round"] >= 1]
    # every client trains every round: its count is the round, and it remembers every round it saw
    assert [r["train_rounds"] for r in rs] == [1.0, 2.0, 3.0]
    assert [r["train_seen_sum"] for r in rs] == [1.0, 3.0, 6.0]


@pytest.mark.parametrize("backend", ["processes", "vectorized"])
def test_every_backend_gives_the_same_bits(tmp_path, backend):
    ref = run_app(tmp_path / "ref", "counting_app:app")
    other = run_app(tmp_path / backend, "counting_app:app", f"simulation.backend={backend}", "simulation.workers=2")
    a, b = load_safetensors(ref / "model.safetensors"), load_safetensors(other / "model.safetensors")
    assert a["w"].tobytes() == b["w"].tobytes()
    keep = ("round", "distance", "train_lr", "train_rounds", "train_seen_sum")
    assert [{k: r.get(k) for k in keep} for r in records(ref)] == [{k: r.get(k) for k in keep} for r in records(other)]


def test_metric_aggregation_is_the_apps(tmp_path):
    folder = run_app(tmp_path, "counting_app:aggregated", "app.lr=0.5")
    rs = records(folder)
    assert [r["train_lr_min"] for r in rs] == [0.5, 0.5, 0.25, 0.25]
    assert all(r["train_clients"] == 3 for r in rs)  # 6 clients, fraction 0.5
    assert "train_scale" not in rs[0]  # the default mean is replaced, not added to


def test_round_zero_evaluates_the_initial_model(tmp_path):
    folder = run_app(tmp_path, "counting_app:app", "evaluate.initial=true")
    rs = records(folder)
    assert rs[0]["round"] == 0 and rs[0]["status"] == "initial"
    assert rs[0]["distance"] == pytest.approx(np.sqrt(8) * 2)  # |ones(8)| x scale 2: nothing trained yet
    assert [r["round"] for r in rs] == [0, 1, 2, 3, 4]


def test_server_evaluation_uses_the_clients_threads(tmp_path):
    rs = records(run_app(tmp_path / "a", "counting_app:app"))
    assert {r["threads"] for r in rs} == {1}  # simulation.threads = 1, not torch's default of the machine
    rs = records(run_app(tmp_path / "b", "counting_app:app", "evaluate.threads=2"))
    assert {r["threads"] for r in rs} == {2}


def test_a_coordinating_app_loads_no_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("COHORT_DATA_DIR", str(tmp_path / "nothing-here"))
    folder = run_app(tmp_path, "counting_app:coordinator")
    assert len(records(folder)) == 4 and not (tmp_path / "nothing-here").exists()


def test_weights_instead_of_deltas_warn_once(tmp_path):
    import cohort.channel.runtime as runtime

    runtime._WARNED.clear()
    runtime._LOOKED[0] = 0
    runtime._NORMS.clear()
    runtime._LOOKS.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_app(tmp_path, "counting_app:weights")
    said = [w for w in caught if "looks like trained weights" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    assert "trained[k] - arrays[k]" in str(said[0].message)


def test_the_zoos_clients_never_warn(tmp_path):
    import cohort.channel.runtime as runtime

    examples = Path(__file__).resolve().parents[2] / "examples"
    for config, sets in ((None, ["rounds=2"]),  # the demo: logistic regression on the hospitals' data
                         (None, ["data.dataset=mnist", "data.num_clients=100", "model.name=mlp", "rounds=2",
                                 "server.fraction=0.05", "evaluate.centralized=false"]),  # the fit replies are what is looked at
                         (None, ["data.dataset=mnist", "data.num_clients=100", "model.name=cnn", "rounds=2", "client.epochs=1",
                                 "server.fraction=0.03", "evaluate.centralized=false"]),
                         (examples / "sklearn_sgd.toml", ["rounds=2"]),
                         # linear regression far from its optimum: round 2's delta is a third of the model
                         (examples / "diabetes_linear.toml", ["rounds=3"]),
                         (None, ["server.algorithm=scaffold", "rounds=3"]),
                         (None, ["server.algorithm=fedprox", "rounds=3"])):
        runtime._WARNED.clear()
        runtime._LOOKED[0] = 0
        runtime._NORMS.clear()
        runtime._LOOKS.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["run", *([str(config)] if config else []), "--out", str(tmp_path), "--no-progress", "--quiet",
                         *[a for s in sets for a in ("--set", s)]]) == 0
        assert not [w for w in caught if "looks like trained weights" in str(w.message)], sets
        assert runtime._LOOKED[0] > 0  # it did look


def test_to_torch_of_read_only_arrays_does_not_warn():
    import torch

    from cohort import to_torch

    a = np.arange(6, dtype=np.float32)
    a.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = to_torch({"a": a})["a"]
    t.add_(1)  # a tensor the caller may train in place, not a view of read-only memory
    assert a[0] == 0 and t[0].item() == 1
    w = np.arange(3, dtype=np.float32)
    assert to_torch({"w": w})["w"].data_ptr() == w.ctypes.data  # writable arrays are still viewed, not copied


def test_app_settings_keep_their_types(tmp_path):
    with pytest.raises(ConfigError, match=r"app.lr is 'fast'.*expected a number"):
        load_app("counting_app:app").load_config(None, ["app.lr=fast"])
    config = load_app("counting_app:app").load_config(None, ["app.lr=1", "app.extra=7"])
    assert config.app["lr"] == 1.0 and isinstance(config.app["lr"], float) and config.app["extra"] == 7
    with pytest.raises(ConfigError, match="datetime|expected a number, boolean, string"):
        App(config={"app": {"when": __import__("datetime").date(2026, 1, 1)}}).load_config()


def test_bad_apps_are_named(tmp_path):
    with pytest.raises(ConfigError, match="expected module:attribute"):
        load_app("counting_app")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        load_app("no_such_module:app")
    with pytest.raises(ConfigError, match="has no 'nope'"):
        load_app("counting_app:nope")
    assert main(["run", "--app", "counting_app:Counter", "--out", str(tmp_path)]) == 2  # said on stderr, no traceback
    from cohort.app import build_app

    with pytest.raises(ConfigError, match="no initial model"):
        build_app(App().load_config(), App(client=lambda c: None))


@pytest.mark.slow
def test_context_state_survives_sigkill_and_resume(tmp_path):
    """A run killed mid-round and resumed ends byte-identical to an uninterrupted one, the clients'
    context state included (their counts go on from the checkpoint, not from zero)."""
    sets = ["rounds=6", "server.fraction=1.0", "app.sleep=0.05"]
    args = ["run", "--app", "counting_app:app", "--no-progress", "--quiet", *[a for s in sets for a in ("--set", s)]]
    ref = subprocess.run(cohort_cmd(*args, "--out", str(tmp_path / "ref")), capture_output=True, text=True,
                         timeout=120, env=ENV, cwd=TESTS)
    assert ref.returncode == 0, ref.stderr
    (ref_folder,) = (tmp_path / "ref").glob("counting-*")
    proc = subprocess.Popen(cohort_cmd(*args, "--out", str(tmp_path / "killed")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "killed").glob("counting-*/checkpoints/round-00000003.json")):
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint of round 3"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        end_all([proc])
    (folder,) = (tmp_path / "killed").glob("counting-*")
    assert not (folder / "summary.json").exists()
    resumed = subprocess.run(cohort_cmd("run", "--resume", str(folder), "--no-progress", "--quiet"),
                             capture_output=True, text=True, timeout=120, env=ENV, cwd=TESTS)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_safetensors(ref_folder / "model.safetensors"), load_safetensors(folder / "model.safetensors")
    assert a["w"].tobytes() == b["w"].tobytes()
    keep = ("round", "distance", "train_rounds", "train_seen_sum")
    assert [{k: r.get(k) for k in keep} for r in records(folder)] == [{k: r.get(k) for k in keep} for r in records(ref_folder)]
    assert [r["train_rounds"] for r in records(folder)] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
