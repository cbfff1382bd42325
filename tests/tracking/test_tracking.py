"""Tracking: metrics writers (JSONL, CSV), the run folder, per-round console lines and plots."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from cohort.core.arrays import load_safetensors
from cohort.core.errors import ConfigError
from cohort.tracking import CSV_COLUMNS, ConsoleProgress, CsvWriter, JsonlWriter, format_record, plot_runs, read_jsonl
from cohort.tracking.run_folder import RunFolder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(r: int, **extra) -> dict:
    base = {"round": r, "status": "ok", "clients_sampled": 10, "clients_succeeded": 9, "clients_failed": 1,
            "train_loss": 0.5 / r, "loss": 0.4 / r, "accuracy": 0.8 + 0.01 * r,
            "bytes_sent": 4960, "bytes_received": 2232, "seconds": 0.25}
    return {**base, **extra}


# --- writers ------------------------------------------------------------------------------------


def test_jsonl_round_trip_keeps_every_key_and_flushes_each_round(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [record(1), record(2, failures=["client 3 (fit): boom"], federated_accuracy=0.75)]
    writer = JsonlWriter(path)
    writer.write(records[0])
    assert read_jsonl(path) == [records[0]]  # readable before close: a killed run keeps its rounds
    writer.write(records[1])
    writer.close()
    assert read_jsonl(path) == records
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["round"] == i + 1 for i, line in enumerate(lines))


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"round": 1}\n\n  \n{"round": 2}\n')
    assert read_jsonl(path) == [{"round": 1}, {"round": 2}]


def test_csv_columns_in_order_blanks_for_missing_and_extras_ignored(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = CsvWriter(path)
    writer.write(record(1, failures=["client 3 (fit): boom"], accuracy=0.123456789))
    writer.write({"round": 2, "status": "skipped", "clients_sampled": 10, "clients_succeeded": 0,
                  "clients_failed": 10, "bytes_sent": 4960, "bytes_received": 0, "seconds": 1.5})
    writer.close()
    rows = list(csv.reader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert CSV_COLUMNS[:4] == ("round", "status", "accuracy", "loss")
    for name in ("clients_sampled", "clients_succeeded", "bytes_sent", "bytes_received", "seconds"):
        assert name in CSV_COLUMNS
    first = dict(zip(rows[0], rows[1]))
    assert first["round"] == "1" and first["accuracy"] == "0.123457"  # 6 significant digits
    assert first["clients_sampled"] == "10" and first["bytes_received"] == "2232" and first["r2"] == ""
    assert "boom" not in path.read_text()  # failures stay in the JSONL only
    second = dict(zip(rows[0], rows[2]))
    assert second["status"] == "skipped" and second["accuracy"] == "" and second["seconds"] == "1.5"
    assert len(rows) == 3 and all(len(row) == len(CSV_COLUMNS) for row in rows)


def test_csv_writer_takes_its_own_columns(tmp_path):
    path = tmp_path / "m.csv"
    writer = CsvWriter(path, columns=("seconds", "round"))
    writer.write(record(4))
    writer.close()
    assert path.read_text().splitlines() == ["seconds,round", "0.25,4"]


# --- run folder ---------------------------------------------------------------------------------


def test_run_folder_never_reuses_a_folder(tmp_path):
    folders = [RunFolder(tmp_path, "same") for _ in range(3)]
    try:
        paths = [f.path for f in folders]
        assert len(set(paths)) == 3 and all(p.parent == tmp_path and p.name.startswith("same-") for p in paths)
    finally:
        for f in folders:
            f.close()


def test_run_folder_writes_metrics_model_and_summary(tmp_path):
    folder = RunFolder(tmp_path / "runs", "t")
    folder.write_config('name = "t"\n')
    folder.write_round(record(1))
    folder.write_round(record(2))
    arrays = {"1.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "1.bias": np.array([0.5, -1], np.float32)}
    from cohort.client.torch import save_torch_model

    folder.save_model(arrays, {"round": "2"}, save_torch_model)
    folder.write_summary({"rounds_completed": 2})
    folder.close()
    p = folder.path
    assert sorted(x.name for x in p.iterdir()) == [".lock", "config.toml", "metrics.csv", "metrics.jsonl", "model.pt",
                                                   "model.safetensors", "summary.json"]  # no temp files left
    assert [r["round"] for r in read_jsonl(p / "metrics.jsonl")] == [1, 2]
    assert len(p.joinpath("metrics.csv").read_text().splitlines()) == 3
    state = torch.load(p / "model.pt", weights_only=True)
    assert list(state) == ["1.weight", "1.bias"]
    loaded = load_safetensors(p / "model.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(state[k].numpy(), v)
        np.testing.assert_array_equal(loaded[k], v)
    assert json.loads(p.joinpath("summary.json").read_text()) == {"rounds_completed": 2}


# --- console ------------------------------------------------------------------------------------


def test_format_record_shows_metrics_in_a_fixed_order():
    text = format_record(record(2, federated_accuracy=0.7))
    assert text == ("acc 0.8200  loss 0.2000  fed acc 0.7000  train loss 0.2500  clients 9/10  0.25s")


def test_format_record_of_a_regression_round():
    text = format_record({"round": 1, "r2": 0.4567, "loss": 2.0, "clients_sampled": 5, "clients_succeeded": 5, "seconds": 0.1})
    assert text == "r2 0.4567  loss 2.0000  clients 5/5  0.10s"


def test_format_record_marks_a_skipped_round():
    text = format_record({"round": 3, "status": "skipped", "clients_sampled": 4, "clients_succeeded": 0, "seconds": 2.0})
    assert text == "clients 0/4  [skipped: too few updates]  2.00s"


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def test_console_progress_prints_a_line_per_round():
    con, buf = console()
    progress = ConsoleProgress(12, console=con, bar=False)
    for r in (1, 2, 12):
        progress(record(r))
    progress.close()
    lines = buf.getvalue().splitlines()
    assert lines == [f"round {r:>2}/12  {format_record(record(r))}" for r in (1, 2, 12)]
    assert "acc 0.8100" in lines[0]


def test_console_progress_prints_the_skipped_marker_as_text():
    con, buf = console()
    progress = ConsoleProgress(3, console=con, bar=False)
    progress({"round": 1, "status": "skipped", "clients_sampled": 3, "clients_succeeded": 0, "seconds": 0.5})
    assert "[skipped: too few updates]" in buf.getvalue()  # not swallowed as rich markup


def test_console_progress_without_lines_prints_nothing():
    con, buf = console()
    progress = ConsoleProgress(3, console=con, bar=False, lines=False)
    progress(record(1))
    progress.close()
    assert buf.getvalue() == ""


def test_console_progress_bar_shows_live_metrics_on_a_terminal():
    buf = io.StringIO()
    con = Console(file=buf, width=200, force_terminal=True, color_system=None)
    progress = ConsoleProgress(3, console=con, bar=True, lines=False)
    progress(record(1))
    progress._progress.refresh()
    progress(record(2))
    progress._progress.refresh()
    progress.close()
    progress.close()  # closing twice is harmless
    out = buf.getvalue()
    assert "round" in out and "2/3" in out and "acc 0.8200" in out


# --- plots --------------------------------------------------------------------------------------


def make_run(folder, records):
    folder.mkdir(parents=True)
    writer = JsonlWriter(folder / "metrics.jsonl")
    for r in records:
        writer.write(r)
    writer.close()
    return folder


def test_plot_overlays_runs_one_panel_per_metric(tmp_path, saved_figures):
    a = make_run(tmp_path / "run-a", [record(r) for r in (1, 2, 3)])
    b = make_run(tmp_path / "run-b", [record(r, accuracy=0.5) for r in (1, 2)])
    out = plot_runs([a, b], tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    (fig,) = saved_figures
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "loss"]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["run-a", "run-b"]
    acc_a, acc_b = fig.axes[0].get_lines()
    assert list(acc_a.get_xdata()) == [1, 2, 3] and list(acc_b.get_ydata()) == [0.5, 0.5]


def test_plot_leaves_out_metrics_no_run_reported_and_rounds_without_it(tmp_path, saved_figures):
    a = make_run(tmp_path / "a", [record(1), {"round": 2, "loss": 0.1}, record(3)])  # round 2: no accuracy
    with pytest.warns(UserWarning, match="no run reported r2: left out of the plot"):
        plot_runs([a], tmp_path / "c.png", metrics=("accuracy", "r2", "loss"))
    (fig,) = saved_figures
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "loss"]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 3]
    assert list(fig.axes[1].get_lines()[0].get_xdata()) == [1, 2, 3]


def test_plot_keeps_runs_whose_folders_share_a_name(tmp_path, saved_figures):
    a = make_run(tmp_path / "x" / "run", [record(1)])
    b = make_run(tmp_path / "y" / "run", [record(1), record(2)])
    plot_runs([a, b], tmp_path / "c.png", metrics=("accuracy",))
    (fig,) = saved_figures
    assert len(fig.axes[0].get_lines()) == 2


def test_plot_of_a_folder_without_metrics_is_a_config_error(tmp_path):
    good = make_run(tmp_path / "good", [record(1)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"is not a run folder: .*metrics\.jsonl is missing"):
        plot_runs([good, tmp_path / "empty"], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_plot_of_metrics_no_run_reported_is_a_config_error(tmp_path):
    a = make_run(tmp_path / "a", [record(1)])
    with pytest.raises(ConfigError, match=r"none of the runs reported r2, federated_r2"):
        plot_runs([a], tmp_path / "c.png", metrics=("r2", "federated_r2"))
