"""`cohort plot` with no --metric draws the metrics a run has: a run on natural partitions (sites with
their own files: no server test set) records federated_* metrics and no accuracy, and is plotted from
them; metrics named that no run has get a message listing what the runs do report."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from cohort.cli import main
from cohort.core.errors import ConfigError
from cohort.tracking.plot import choose_metrics, plot_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def write_sites(folder):
    """Three sites, each with its own CSV file: a natural partition (one client per file)."""
    folder.mkdir(parents=True)
    for name, rows in (("north", 40), ("south", 30), ("west", 24)):
        (folder / f"{name}.csv").write_text("a,b,y\n" + "".join(f"{i % 11},{(i * 7) % 5},{i % 2}\n" for i in range(rows)))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-round run on three sites' files (natural partition), and a 2-round run of the embedded demo
    (server test set), both through the CLI."""
    root = tmp_path_factory.mktemp("plot-metrics")
    sites = write_sites(root / "sites")
    natural = run_main(["run", "--out", str(root / "natural"), "--no-progress", "--quiet", "--set", "rounds=2",
                        "--set", "data.dataset='csv'", "--set", "data.partition='files'",
                        "--set", f"data.client_files=['{sites}/*.csv']", "--set", "data.csv_target='y'",
                        "--set", "model.name='logistic_regression'", "--set", "name=sites"])
    assert natural[0] == 0, natural[2]
    demo = run_main(["run", "--out", str(root / "demo"), "--no-progress", "--quiet", "--set", "rounds=2",
                     "--set", "name=demo"])  # two names: the plot's legend tells the runs apart by folder name
    assert demo[0] == 0, demo[2]
    (natural_folder,) = (root / "natural").iterdir()
    (demo_folder,) = (root / "demo").iterdir()
    return {"root": root, "natural": natural_folder, "demo": demo_folder}


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_the_natural_run_has_federated_metrics_and_no_centralized_ones(runs):
    # the premise of the tests below: no server test set, so no accuracy or loss
    rows = records(runs["natural"])
    assert [r["round"] for r in rows] == [1, 2]
    assert all("accuracy" not in r and "loss" not in r for r in rows)
    assert all("federated_accuracy" in r and "federated_loss" in r for r in rows)


def test_plot_of_a_natural_run_with_defaults_draws_its_federated_metrics(runs, saved_figures):
    code, out, err = run_main(["plot", str(runs["natural"])])
    assert code == 0, err
    png = runs["natural"] / "curves.png"
    try:
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 1000
        assert out.splitlines() == [
            "plotted federated_accuracy, federated_loss: the metrics these runs report (choose others with --metric)",
            f"wrote {png}"]
        assert err == ""
        (fig,) = saved_figures
        assert [ax.get_ylabel() for ax in fig.axes] == ["federated_accuracy", "federated_loss"]
        (line,) = fig.axes[0].get_lines()
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == [r["federated_accuracy"] for r in records(runs["natural"])]
    finally:
        png.unlink(missing_ok=True)  # leave the folder as the run wrote it


def test_plot_of_a_run_with_a_server_test_set_still_draws_accuracy_and_loss(runs, saved_figures, tmp_path):
    png = tmp_path / "demo.png"
    code, out, err = run_main(["plot", str(runs["demo"]), "-o", str(png)])
    assert code == 0, err
    assert out.strip() == f"wrote {png}"  # the usual choice: nothing to explain
    assert png.read_bytes().startswith(PNG_MAGIC)
    (fig,) = saved_figures
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "loss"]


def test_overlaying_both_kinds_of_run_draws_each_runs_metrics(runs, saved_figures, tmp_path):
    assert choose_metrics([runs["natural"], runs["demo"]]) == ["accuracy", "loss", "federated_accuracy", "federated_loss"]
    out = plot_runs([runs["natural"], runs["demo"]], tmp_path / "both.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    (fig,) = saved_figures
    panels = {ax.get_ylabel(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert list(panels) == ["accuracy", "loss", "federated_accuracy", "federated_loss"]
    # the natural run has no line on the accuracy panel (nothing recorded), one on the federated ones
    natural, demo = runs["natural"].name, runs["demo"].name
    assert natural.startswith("sites-") and demo.startswith("demo-")
    acc_lines = {line.get_label(): len(line.get_xdata()) for line in fig.axes[0].get_lines()}
    assert acc_lines[natural] == 0 and acc_lines[demo] == 2
    assert {line.get_label(): len(line.get_xdata()) for line in fig.axes[2].get_lines()} == {natural: 2, demo: 2}


def test_named_metrics_no_run_has_name_the_metrics_the_runs_do_have(runs, tmp_path):
    png = tmp_path / "c.png"
    code, out, err = run_main(["plot", str(runs["natural"]), "--metric", "accuracy", "-o", str(png)])
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: none of the runs reported accuracy; they report federated_accuracy, "
                          "federated_loss, train_loss (and the rounds' own figures: ")
    assert "bytes_sent" in err and "choose metrics with --metric" in err
    assert not png.exists()


def test_a_named_metric_no_run_has_is_left_out_with_a_warning(runs, saved_figures, tmp_path):
    png = tmp_path / "c.png"
    code, out, err = run_main(["plot", str(runs["natural"]), "--metric", "federated_loss", "--metric", "f1",
                               "-o", str(png)])
    assert code == 0, err
    assert err == "warning: no run reported f1: left out of the plot\n"
    assert out.strip() == f"wrote {png}"
    (fig,) = saved_figures
    assert [ax.get_ylabel() for ax in fig.axes] == ["federated_loss"]


def run_folder(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_without_the_usual_metrics_the_clients_training_figures_then_an_apps_own_are_drawn(tmp_path):
    bookkeeping = {"clients_sampled": 3, "bytes_sent": 10, "seconds": 0.1, "fit_seconds": 0.1, "version": 1}
    train = run_folder(tmp_path / "train", [{"round": r, "train_accuracy": 0.5, "train_loss": 1 / r, **bookkeeping}
                                            for r in (1, 2)])
    assert choose_metrics([train]) == ["train_loss", "train_accuracy"]
    app = run_folder(tmp_path / "app", [{"round": r, "status": "ok", "mse": 2.0 / r, "f1": 0.3, **bookkeeping}
                                        for r in (1, 2)])
    assert choose_metrics([app]) == ["mse", "f1"]  # the app's own numbers; not the rounds' bookkeeping, not text
    other = run_folder(tmp_path / "other", [{"round": 1, "mse": 1.5, **bookkeeping}])
    assert choose_metrics([app, other]) == ["mse", "f1"]
    assert choose_metrics([other, train]) == ["train_loss", "train_accuracy", "mse"]


def test_a_run_with_no_numbers_to_plot_is_a_config_error(tmp_path):
    run = run_folder(tmp_path / "run", [{"round": 1, "status": "ok", "clients_sampled": 3}])
    with pytest.raises(ConfigError, match=r"none of the runs reported a metric to plot \(.*metrics\.jsonl\): they "
                       r"report no model metric \(and the rounds' own figures: clients_sampled\); choose metrics with --metric"):
        plot_runs([run], tmp_path / "c.png")
    empty = run_folder(tmp_path / "empty", [])
    with pytest.raises(ConfigError, match=r"no record with a round holds a number \(has a round finished yet\?\)"):
        plot_runs([empty], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
