"""The ``cohort`` command: ``cohort run`` writes a complete run folder; ``cohort plot`` draws runs; bad
input exits with code 2 and a message, never a traceback, before any training."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cohort.cli import main
from cohort.config import load_config
from cohort.core.arrays import load_safetensors
from cohort.data.from_config import load_data
from cohort.models import model_factory
from cohort.tracking import CSV_COLUMNS, read_jsonl

COHORT = Path(sys.executable).parent / "cohort"  # the console script installed beside this Python
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROUND_FIELDS = ("round", "accuracy", "loss", "clients_sampled", "clients_succeeded", "bytes_sent", "bytes_received", "seconds")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def only_folder(root: Path) -> Path:
    (folder,) = list(root.iterdir())
    return folder


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Two short runs of the demo through the CLI: 3 rounds (lines printed) and 2 rounds (--quiet)."""
    root = tmp_path_factory.mktemp("cli")
    first = run_main(["run", "--out", str(root / "a"), "--no-progress", "--set", "rounds=3"])
    second = run_main(["run", "--set", f"output.dir='{root / 'b'}'", "--quiet", "--set", "rounds=2",
                       "--set", "seed=1", "--set", "name=second"])
    return {"root": root, "first": first, "second": second,
            "a": only_folder(root / "a") if (root / "a").exists() else None,
            "b": only_folder(root / "b") if (root / "b").exists() else None}


# --- a run and its folder -----------------------------------------------------------------------


def test_run_prints_a_line_per_round_and_the_run_folder(demo_runs):
    code, out, err = demo_runs["first"]
    assert code == 0, err
    lines = out.splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert [re.match(r"round (\d)/3  acc 0\.\d{4}  loss \d\.\d{4}", line).group(1) for line in rounds] == ["1", "2", "3"]
    assert lines[0].startswith("cohort: hospitals-demo from the embedded demo")
    assert f"run folder: {demo_runs['a']}" in lines  # on one line, however long the path
    assert re.search(r"best accuracy 0\.\d{4} at round \d, last 0\.\d{4} at round 3; stopped by rounds after 3 rounds", out)
    assert err == ""


def test_quiet_run_prints_no_round_lines(demo_runs):
    code, out, err = demo_runs["second"]
    assert code == 0, err
    assert not any(line.startswith("round ") for line in out.splitlines())
    assert f"run folder: {demo_runs['b']}" in out.splitlines()
    assert demo_runs["b"].name.startswith("second-")


def test_run_folder_holds_config_metrics_model_and_summary(demo_runs):
    assert sorted(p.name for p in demo_runs["a"].iterdir()) == [
        ".lock", "checkpoints", "clients.jsonl", "clients.txt", "config.toml", "metrics.csv", "metrics.jsonl", "model.pt",
        "model.safetensors", "summary.json"]
    clients = (demo_runs["a"] / "clients.txt").read_text()
    assert clients.startswith("10 clients") and "label histogram" in clients
    # a row per sampled client per round for training, and one per evaluated client (the demo takes all 10 in both)
    rows = [json.loads(line) for line in (demo_runs["a"] / "clients.jsonl").read_text().splitlines()]
    for r in (1, 2, 3):
        for task in ("fit", "evaluate"):
            mine = [row for row in rows if row["round"] == r and row["task"] == task]
            assert sorted(row["client"] for row in mine) == list(range(10)), (r, task)
            assert all(row["status"] == "ok" and row["examples"] >= 1 and row["seconds"] >= 0 for row in mine)
    fit = [row for row in rows if row["task"] == "fit"]
    assert all(row["bytes"] == 31 * 2 * 4 and "train_loss" in row["metrics"] for row in fit)  # 30 features + bias, 2 classes
    evaluated = [row for row in rows if row["task"] == "evaluate"]
    assert all(0 <= row["metrics"]["accuracy"] <= 1 and row["loss"] > 0 for row in evaluated)
    records = [json.loads(line) for line in (demo_runs["a"] / "metrics.jsonl").read_text().splitlines()]
    assert all("clients" not in rec for rec in records)


def test_resolved_config_loads_back_equal(demo_runs):
    root = demo_runs["root"]
    saved = load_config(demo_runs["a"] / "config.toml")
    assert saved == load_config(None, ["rounds=3", f"output.dir='{root / 'a'}'"])
    assert saved.rounds == 3 and saved.output.dir == str(root / "a")


def test_metrics_jsonl_and_csv_agree_round_by_round(demo_runs):
    folder = demo_runs["a"]
    records = read_jsonl(folder / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3]
    for r in records:
        assert all(k in r for k in ROUND_FIELDS)
        assert r["clients_sampled"] == r["clients_succeeded"] == 10  # the demo samples every hospital
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0 and r["seconds"] > 0
        assert 0 <= r["accuracy"] <= 1 and r["loss"] > 0
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 3
    for r, row in zip(records, rows):
        assert int(row["round"]) == r["round"] and int(row["bytes_sent"]) == r["bytes_sent"]
        assert float(row["accuracy"]) == pytest.approx(r["accuracy"], rel=1e-5)
        assert float(row["loss"]) == pytest.approx(r["loss"], rel=1e-5)


def test_summary_matches_the_metrics(demo_runs):
    folder = demo_runs["a"]
    summary = json.loads((folder / "summary.json").read_text())
    records = read_jsonl(folder / "metrics.jsonl")
    best = max(records, key=lambda r: r["accuracy"])
    assert summary["best"] == {"metric": "accuracy", "value": best["accuracy"], "round": best["round"]}
    assert summary["final"] == records[-1]
    assert summary["stopped_by"] == "rounds" and summary["rounds_completed"] == 3
    assert summary["num_clients"] == 10 and summary["num_parameters"] == 30 * 2 + 2
    assert summary["folder"] == str(folder)


def test_saved_model_loads_into_the_model_factory_and_reproduces_the_final_accuracy(demo_runs):
    folder = demo_runs["a"]
    config = load_config(folder / "config.toml")
    model = model_factory(config.model.name, (30,), 2)()
    state = torch.load(folder / "model.pt", weights_only=True)
    model.load_state_dict(state)  # strict: every name and shape fits
    for name, array in load_safetensors(folder / "model.safetensors").items():
        np.testing.assert_array_equal(state[name].numpy(), array)
    _, test = load_data(config.data, config.seed)
    with torch.no_grad():
        predicted = model.eval()(torch.as_tensor(test.x, dtype=torch.float32)).argmax(1).numpy()
    accuracy = float((predicted == test.y).mean())
    assert accuracy == pytest.approx(read_jsonl(folder / "metrics.jsonl")[-1]["accuracy"], abs=1e-9)


def test_plot_overlays_two_runs(demo_runs, tmp_path):
    png = tmp_path / "both.png"
    code, out, err = run_main(["plot", str(demo_runs["a"]), str(demo_runs["b"]), "-o", str(png)])
    assert code == 0, err
    assert out.strip() == f"wrote {png}"
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_plot_writes_curves_into_the_first_run_folder_by_default(demo_runs):
    code, out, err = run_main(["plot", str(demo_runs["b"]), "--metric", "federated_accuracy"])
    assert code == 0, err
    png = demo_runs["b"] / "curves.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    png.unlink()  # leave the folder as the run wrote it


# --- bad input: code 2, a message, no traceback, nothing written ---------------------------------


@pytest.mark.parametrize("sets, message", [
    (["server.fractoin=0.5"], "unknown config key 'server.fractoin'; did you mean 'server.fraction'? Known keys in [server]:"),
    (["rounds=abc"], "rounds is 'abc'; expected an integer"),
    (["server.fraction=1.5"], "server.fraction is 1.5; expected 0 < fraction <= 1"),
    (["data.num_clients=1000", "data.partition=iid"], "data.num_clients is 1000 but the training data has only 455 examples"),
    (["model.name=cnn"], "model.name is 'cnn', which does not fit data.dataset = 'breast_cancer'"),
    (["data.dataset=diabetes", "model.name=linear_regression"], "data.partition = 'dirichlet' splits by class label"),
    (["data.holdout_fraction=0"], "federated evaluation (evaluate.federated_fraction = 1) needs held-out client data: set data.holdout_fraction > 0"),
    (["evaluate.target=0.5", "evaluate.target_metric=f1"], "evaluate.target_metric is 'f1', which this run does not report"),
    (["rounds"], "--set 'rounds': expected key=value"),
])
def test_bad_input_exits_2_with_the_message(sets, message, tmp_path):
    out_dir = tmp_path / "runs"
    argv = ["run", "--out", str(out_dir), "--no-progress"]
    for item in sets:
        argv += ["--set", item]
    code, out, err = run_main(argv)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err + out
    assert "round 1/" not in out
    assert not out_dir.exists()  # no run folder: nothing started


def test_missing_data_folder_exits_2_naming_the_folder(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    code, out, err = run_main(["run", "--data-dir", str(empty), "--out", str(tmp_path / "runs"),
                               "--set", "data.dataset=mnist", "--set", "data.download=false",
                               "--set", "model.name=mnist_cnn"])
    assert code == 2
    assert "MNIST files not found in" in err and str(empty / "mnist") in err and "download=False" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() and list(empty.iterdir()) == []


def test_missing_config_file_exits_2(tmp_path):
    code, _, err = run_main(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "runs")])
    assert code == 2 and "does not exist" in err and "nope.toml" in err
    assert not (tmp_path / "runs").exists()


def test_plot_of_a_folder_that_is_not_a_run_exits_2(tmp_path):
    code, _, err = run_main(["plot", str(tmp_path)])
    assert code == 2 and "is not a run folder" in err and "metrics.jsonl is missing" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [[], ["run", "--bogus"], ["plot"], ["fly"]])
def test_bad_command_lines_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage: cohort" in capsys.readouterr().err


# --- the real console script --------------------------------------------------------------------


def cohort(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert COHORT.is_file(), f"the console script {COHORT} is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(COHORT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_console_script_with_a_bad_config_fails_with_a_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('name = "bad"\nrounds = 2\n[data]\nnum_clients = 5\nalhpa = 0.3\n')
    done = cohort("run", str(config), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown config key 'data.alhpa'; did you mean 'data.alpha'?" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists()


def test_console_script_runs_the_demo_to_90_percent(tmp_path):
    out = tmp_path / "runs"
    done = cohort("run", "--out", str(out), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rounds = re.findall(r"^round +(\d+)/20 .*\bacc (0\.\d{4})", done.stdout, flags=re.M)
    assert [int(r) for r, _ in rounds] == list(range(1, 21))
    summary = json.loads((only_folder(out) / "summary.json").read_text())
    assert summary["best"]["metric"] == "accuracy" and summary["best"]["value"] >= 0.90
    assert summary["rounds_completed"] == 20 and summary["num_clients"] == 10
    assert summary["seconds"] < 60
    assert list(tmp_path.iterdir()) == [out]  # nothing written outside --out
