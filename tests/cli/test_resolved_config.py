"""The run folder's config.toml says what the run did: with no server test set (a natural partition:
each site keeps its own held-out data) no centralized evaluation runs, so it says
evaluate.centralized = false; `cohort run --resume` of such a folder still works, and so does one
written before configs were resolved (centralized = true)."""

from __future__ import annotations

import contextlib
import io
import json
import tomllib

import pytest

from cohort.cli import main
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.experiment import check_resumable, run


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def natural_run(tmp_path, rounds: int = 2):
    """A run through the CLI on three sites' own CSV files (partition = "files")."""
    sites = tmp_path / "sites"
    sites.mkdir()
    for name, rows in (("north", 40), ("south", 30), ("west", 24)):
        (sites / f"{name}.csv").write_text("a,b,y\n" + "".join(f"{i % 11},{(i * 7) % 5},{i % 2}\n" for i in range(rows)))
    code, out, err = run_main(["run", "--out", str(tmp_path / "runs"), "--no-progress", "--quiet",
                               "--set", f"rounds={rounds}", "--set", "data.dataset='csv'", "--set", "data.partition='files'",
                               "--set", f"data.client_files=['{sites}/*.csv']", "--set", "data.csv_target='y'",
                               "--set", "model.name='logistic_regression'"])
    assert code == 0, err
    (folder,) = (tmp_path / "runs").iterdir()
    return folder


def evaluate_section(folder) -> dict:
    return tomllib.loads((folder / "config.toml").read_text())["evaluate"]


def rounds_of(folder) -> list[int]:
    return [json.loads(line)["round"] for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_natural_partition_run_writes_centralized_false_and_resumes(tmp_path):
    folder = natural_run(tmp_path)
    assert evaluate_section(folder)["centralized"] is False
    assert all("accuracy" not in json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
    assert load_config(folder / "config.toml").evaluate.centralized is False  # loads back as it says

    code, out, err = run_main(["run", "--resume", str(folder), "--no-progress", "--quiet", "--set", "rounds=3"])
    assert code == 0, err
    assert "differ from the run's own config" not in err + out
    assert rounds_of(folder) == [1, 2, 3]
    config = tomllib.loads((folder / "config.toml").read_text())
    assert config["rounds"] == 3 and config["evaluate"]["centralized"] is False


def test_a_folder_written_before_configs_were_resolved_still_resumes(tmp_path):
    folder = natural_run(tmp_path)
    path = folder / "config.toml"
    path.write_text(path.read_text().replace("centralized = false", "centralized = true"))
    assert evaluate_section(folder)["centralized"] is True  # as an older cohort wrote it

    # the Python API with a config that says centralized = true (the default): resumes, writes the truth
    config = load_config(path, ["rounds=3", "output.progress=false"])
    result = run(config, resume=folder)
    assert result.state.round == 3 and rounds_of(folder) == [1, 2, 3]
    assert evaluate_section(folder)["centralized"] is False


def test_a_run_with_a_server_test_set_keeps_centralized_true_and_a_real_change_is_refused(tmp_path):
    code, _, err = run_main(["run", "--out", str(tmp_path / "runs"), "--no-progress", "--quiet", "--set", "rounds=1"])
    assert code == 0, err
    (folder,) = (tmp_path / "runs").iterdir()
    assert evaluate_section(folder)["centralized"] is True  # the embedded demo: the server has a test set
    assert any("accuracy" in json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
    # there, turning centralized evaluation off changes the run: resume still refuses it
    changed = load_config(folder / "config.toml", ["evaluate.centralized=false"])
    with pytest.raises(ConfigError, match=r"evaluate\.centralized: True -> False differ from the run's own config"):
        check_resumable(folder, changed, test_set=True)
