"""`cohort plot` and read_jsonl on damaged metrics files and awkward output paths."""

from __future__ import annotations

import json
import warnings

import matplotlib.figure
import pytest

from cohort.core.errors import ConfigError, DataError
from cohort.tracking import plot_runs, read_jsonl
from cohort.tracking.writers import iter_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_folder(path, text: str | bytes):
    path.mkdir(parents=True, exist_ok=True)
    target = path / "metrics.jsonl"
    target.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def line(r, **values) -> str:
    return json.dumps({"round": r, "accuracy": 0.5 + r / 100, "loss": 1.0 / r, **values}) + "\n"


# --- read_jsonl -----------------------------------------------------------------------------------


def test_read_jsonl_skips_a_truncated_last_line_with_a_warning_naming_file_and_line(tmp_path):
    path = run_folder(tmp_path / "r", line(1) + line(2) + '{"round": 3, "accur')  / "metrics.jsonl"
    with pytest.warns(UserWarning, match=rf"{path}, line 3: the line is not valid JSON \(a truncated write\?\)"):
        records = read_jsonl(path)
    assert [r["round"] for r in records] == [1, 2]
    with pytest.raises(DataError, match=rf"{path}, line 3: the line is not valid JSON"):
        read_jsonl(path, strict=True)


@pytest.mark.parametrize("bad, kind", [("[1, 2]", "list"), ("3", "number"), ('"text"', "string"), ("null", "literal")])
def test_read_jsonl_skips_lines_that_are_not_objects(tmp_path, bad, kind):
    path = run_folder(tmp_path / "r", line(1) + bad + "\n" + line(2)) / "metrics.jsonl"
    with pytest.warns(UserWarning, match=rf"line 2: the line is a JSON {kind}, .*expected an object") as record:
        assert [r["round"] for r in read_jsonl(path)] == [1, 2]
    assert len(record) == 1
    with pytest.warns(UserWarning, match="line 2"):
        assert [n for n, _ in iter_jsonl(path)] == [1, 3]
    with pytest.raises(DataError, match=f"line 2: the line is a JSON {kind}"):
        read_jsonl(path, strict=True)


def test_read_jsonl_survives_a_line_cut_inside_a_utf8_character(tmp_path):
    path = run_folder(tmp_path / "r", line(1).encode() + '{"round": 2, "name": "é'.encode()[:-1])
    with pytest.warns(UserWarning, match=r"line 2: the line is not UTF-8 text"):
        assert read_jsonl(path / "metrics.jsonl") == [json.loads(line(1))]


def test_read_jsonl_of_a_clean_file_warns_nothing(tmp_path):
    path = run_folder(tmp_path / "r", line(1) + "\n" + line(2)) / "metrics.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_jsonl(path)) == 2


# --- plot: damaged metrics ------------------------------------------------------------------------


def test_plot_skips_a_truncated_last_line(tmp_path, saved_figures):
    run = run_folder(tmp_path / "run", line(1) + line(2) + line(3)[:17])
    with pytest.warns(UserWarning, match=r"metrics\.jsonl, line 3: the line is not valid JSON"):
        out = plot_runs([run], tmp_path / "c.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    (fig,) = saved_figures
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2]


def test_plot_skips_non_object_lines(tmp_path, saved_figures):
    run = run_folder(tmp_path / "run", line(1) + "[1, 2]\n3\n" + line(2))
    with pytest.warns(UserWarning) as record:
        plot_runs([run], tmp_path / "c.png")
    messages = [str(w.message) for w in record]
    assert any("line 2: the line is a JSON list" in m for m in messages)
    assert any("line 3: the line is a JSON number" in m for m in messages)
    (fig,) = saved_figures
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2]


@pytest.mark.parametrize("record, what", [
    ({"accuracy": 0.9}, "no 'round'"),
    ({"round": "2", "accuracy": 0.9}, "round '2', not a number"),
    ({"round": None, "accuracy": 0.9}, "round None, not a number"),
    ({"round": True, "accuracy": 0.9}, "round True, not a number"),
    ({"round": [2], "accuracy": 0.9}, r"round \[2\], not a number"),
])
def test_plot_skips_records_without_a_numeric_round(tmp_path, saved_figures, record, what):
    run = run_folder(tmp_path / "run", line(1) + json.dumps(record) + "\n" + line(3))
    with pytest.warns(UserWarning, match=rf"metrics\.jsonl, line 2: the record has {what}; skipped"):
        plot_runs([run], tmp_path / "c.png", metrics=("accuracy",))
    (fig,) = saved_figures
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 3]


def test_plot_leaves_out_values_that_are_not_numbers(tmp_path, saved_figures):
    run = run_folder(tmp_path / "run", line(1) + line(2, accuracy="n/a") + line(3, accuracy={"a": 1}) + line(4))
    with pytest.warns(UserWarning) as record:
        plot_runs([run], tmp_path / "c.png")
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "line 2: accuracy = 'n/a' is not a finite number; left out of the plot" in messages[0]
    assert "line 3: accuracy = {'a': 1} is not a finite number" in messages[1]
    (fig,) = saved_figures
    acc, loss = (ax.get_lines()[0] for ax in fig.axes)
    assert list(acc.get_xdata()) == [1, 4] and list(loss.get_xdata()) == [1, 2, 3, 4]


def test_plot_of_runs_with_only_bad_lines_is_a_config_error(tmp_path):
    run = run_folder(tmp_path / "run", '{"accuracy": 0.5}\n[1]\n')
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="none of the runs reported"):
        plot_runs([run], tmp_path / "c.png")


def test_plot_keeps_a_run_given_twice_and_a_third_with_the_same_name(tmp_path, saved_figures):
    a = run_folder(tmp_path / "x" / "run", line(1))
    b = run_folder(tmp_path / "y" / "run", line(1) + line(2))
    plot_runs([a, b, a], tmp_path / "c.png", metrics=("accuracy",))
    (fig,) = saved_figures
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert len(labels) == 3 and len(set(labels)) == 3


# --- plot: the output path ------------------------------------------------------------------------


def test_plot_without_an_extension_writes_and_returns_a_png(tmp_path):
    run = run_folder(tmp_path / "run", line(1))
    out = plot_runs([run], tmp_path / "adir")
    assert out == tmp_path / "adir.png"
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "adir").exists()


def test_plot_into_an_existing_folder_writes_curves_png_there(tmp_path):
    run = run_folder(tmp_path / "run", line(1))
    (tmp_path / "plots").mkdir()
    out = plot_runs([run], tmp_path / "plots")
    assert out == tmp_path / "plots" / "curves.png" and out.read_bytes().startswith(PNG_MAGIC)


def test_cli_prints_the_file_it_really_wrote(tmp_path, capsys):
    from cohort.cli import main

    run = run_folder(tmp_path / "run", line(1))
    assert main(["plot", str(run), "-o", str(tmp_path / "adir")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'adir.png'}"
    assert (tmp_path / "adir.png").is_file()


@pytest.mark.parametrize("name", ["out.xyz", "out.png.bak"])
def test_plot_to_an_unknown_extension_is_a_config_error_listing_the_supported_ones(tmp_path, name):
    run = run_folder(tmp_path / "run", line(1))
    with pytest.raises(ConfigError) as info:
        plot_runs([run], tmp_path / name)
    message = str(info.value)
    suffix = name.rsplit(".", 1)[1]
    assert f"unknown extension '.{suffix}'" in message and name in message
    assert "supported:" in message and ".png" in message and ".pdf" in message and ".svg" in message
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name, magic", [("c.PDF", b"%PDF"), ("c.svg", b"<?xml")])
def test_plot_writes_other_formats_by_extension(tmp_path, name, magic):
    run = run_folder(tmp_path / "run", line(1))
    out = plot_runs([run], tmp_path / name)
    assert out == tmp_path / name and out.read_bytes().startswith(magic)


def test_plot_under_a_file_is_a_config_error_naming_the_path(tmp_path):
    run = run_folder(tmp_path / "run", line(1))
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "sub" / "c.png"
    with pytest.raises(ConfigError, match=rf"cannot write the plot to '{out}': '{tmp_path / 'afile'}' exists and is not a folder"):
        plot_runs([run], out)


def test_plot_when_saving_is_refused_is_a_config_error_with_the_os_reason(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    run = run_folder(tmp_path / "run", line(1))

    def refuse(self, fname, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
    before = set(plt.get_fignums())
    with pytest.raises(ConfigError, match=rf"cannot write the plot to '{tmp_path / 'c.png'}': Permission denied"):
        plot_runs([run], tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no half file, no temp file
    assert set(plt.get_fignums()) == before  # the figure was closed


def test_plot_onto_an_existing_folder_named_like_a_file_writes_inside_it(tmp_path):
    run = run_folder(tmp_path / "run", line(1))
    (tmp_path / "c.png").mkdir()
    out = plot_runs([run], tmp_path / "c.png")
    assert out == tmp_path / "c.png" / "curves.png" and out.is_file()
