"""Metrics writers on a full disk: a record is written whole or not at all, and the error says so."""

from __future__ import annotations

import csv
import errno
import json
import os

import pytest

from cohort.core.errors import CohortError
from cohort.tracking import CSV_COLUMNS, CsvWriter, JsonlWriter, read_jsonl
from cohort.tracking.run_folder import RunFolder

REAL_WRITE = os.write


def full_disk(monkeypatch, mode: str) -> list[int]:
    """Make os.write fail like a disk that fills up partway through a record; returns the call log."""
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if mode == "short":  # the kernel wrote what fit and says how much
            return REAL_WRITE(fd, bytes(data)[: len(data) // 2])
        if mode == "partial-then-error":  # worst case: bytes reached the file, then the call failed
            REAL_WRITE(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    return calls


def json_lines(path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} ends in half a line: {text[-40:]!r}"
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("mode", ["short", "partial-then-error", "error"])
def test_jsonl_on_a_full_disk_keeps_only_whole_lines_and_goes_on_once_space_is_back(tmp_path, monkeypatch, mode):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    writer = JsonlWriter(path)
    writer.write({"round": 1, "accuracy": 0.5})
    calls = full_disk(monkeypatch, mode)
    with pytest.raises(CohortError) as info:
        writer.write({"round": 2, "accuracy": 0.6, "failures": ["x" * 500]})
    assert len(calls) == 1  # the whole line went to the kernel in one write
    message = str(info.value)
    assert f"cannot write {path}: No space left on device (disk full?)" in message
    assert f"the run folder {path.parent} keeps every record written before" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert json_lines(path) == [{"round": 1, "accuracy": 0.5}]

    monkeypatch.setattr(os, "write", REAL_WRITE)  # space is back
    writer.write({"round": 3, "accuracy": 0.7})
    writer.close()
    assert json_lines(path) == [{"round": 1, "accuracy": 0.5}, {"round": 3, "accuracy": 0.7}]
    assert read_jsonl(path, strict=True) == json_lines(path)


def test_jsonl_when_even_the_undo_fails_the_next_line_starts_fresh(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    writer = JsonlWriter(path)
    writer.write({"round": 1})
    full_disk(monkeypatch, "partial-then-error")

    def no_truncate(fd, size):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(CohortError, match="disk full"):
        writer.write({"round": 2, "note": "y" * 100})
    monkeypatch.undo()
    writer.write({"round": 3})
    writer.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"round": 1} and json.loads(lines[-1]) == {"round": 3}
    assert len(lines) == 3  # the torn half line is alone on its line, not glued to round 3
    with pytest.warns(UserWarning, match=r"line 2: the line is not valid JSON"):
        assert read_jsonl(path) == [{"round": 1}, {"round": 3}]


def test_jsonl_writes_numpy_scalars_as_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "m.jsonl"
    writer = JsonlWriter(path)
    writer.write({"round": np.int64(1), "loss": np.float32(0.5), "hist": np.arange(3)})
    writer.close()
    assert json_lines(path) == [{"round": 1, "loss": 0.5, "hist": [0, 1, 2]}]


def test_writers_refuse_writes_after_close(tmp_path):
    writer = JsonlWriter(tmp_path / "m.jsonl")
    writer.close()
    writer.close()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        writer.write({"round": 1})


@pytest.mark.parametrize("mode", ["short", "partial-then-error", "error"])
def test_csv_on_a_full_disk_keeps_only_whole_rows(tmp_path, monkeypatch, mode):
    path = tmp_path / "metrics.csv"
    writer = CsvWriter(path)
    writer.write({"round": 1, "status": "ok", "accuracy": 0.5})
    calls = full_disk(monkeypatch, mode)
    with pytest.raises(CohortError) as info:
        writer.write({"round": 2, "status": "ok", "accuracy": 0.25, "loss": 1.5})
    assert len(calls) == 1
    assert f"cannot write {path}: No space left on device (disk full?); the run folder {tmp_path}" in str(info.value)
    rows = list(csv.reader(path.open(newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2 and rows[1][:3] == ["1", "ok", "0.5"]
    assert path.read_bytes().endswith(b"\r\n")

    monkeypatch.setattr(os, "write", REAL_WRITE)
    writer.write({"round": 3, "status": "ok", "accuracy": 0.75})
    writer.close()
    rows = list(csv.reader(path.open(newline="")))
    assert [r[0] for r in rows[1:]] == ["1", "3"] and all(len(r) == len(CSV_COLUMNS) for r in rows)


def test_csv_rows_are_one_write_each_and_quote_like_csv(tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    writer = CsvWriter(path, columns=("round", "status"))
    calls = []

    def write(fd, data):
        calls.append(bytes(data))
        return REAL_WRITE(fd, data)

    monkeypatch.setattr(os, "write", write)
    writer.write({"round": 1, "status": 'odd, "quoted"\nvalue'})
    writer.close()
    assert calls == [b'1,"odd, ""quoted""\nvalue"\r\n']
    assert list(csv.reader(path.open(newline=""))) == [["round", "status"], ["1", 'odd, "quoted"\nvalue']]


def test_run_folder_round_on_a_full_disk_is_a_cohort_error_naming_the_folder(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path, "t")
    try:
        folder.write_round({"round": 1, "accuracy": 0.5})
        full_disk(monkeypatch, "short")
        with pytest.raises(CohortError, match=f"the run folder {folder.path} keeps every record written before"):
            folder.write_round({"round": 2, "accuracy": 0.6})
        monkeypatch.undo()
    finally:
        folder.close()
    assert json_lines(folder.path / "metrics.jsonl") == [{"round": 1, "accuracy": 0.5}]
    assert len(list(csv.reader((folder.path / "metrics.csv").open(newline="")))) == 2


def test_jsonl_appending_to_a_file_cut_mid_line_starts_on_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\n{"round": 2, "acc')  # an earlier process died mid-write
    writer = JsonlWriter(path)
    writer.write({"round": 2})
    writer.close()
    assert path.read_text().splitlines()[-1] == '{"round": 2}'
    with pytest.warns(UserWarning, match="line 2: the line is not valid JSON"):
        assert read_jsonl(path) == [{"round": 1}, {"round": 2}]


def test_csv_append_keeps_the_rows_and_writes_no_second_header(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = CsvWriter(path, columns=("round", "loss"))
    writer.write({"round": 1, "loss": 0.5})
    writer.close()
    writer = CsvWriter(path, columns=("round", "loss"), append=True)
    writer.write({"round": 2, "loss": 0.25})
    writer.close()
    assert path.read_text().splitlines() == ["round,loss", "1,0.5", "2,0.25"]
    fresh = CsvWriter(tmp_path / "new.csv", columns=("round", "loss"), append=True)  # nothing to keep: a header
    fresh.close()
    assert (tmp_path / "new.csv").read_text().splitlines() == ["round,loss"]
    again = CsvWriter(path, columns=("round", "loss"))  # without append: a new file, as before
    again.close()
    assert path.read_text().splitlines() == ["round,loss"]
