"""Metrics writers behind one interface: a run's round records go to each writer as they happen."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from cohort.core.errors import CohortError, DataError

# The columns of metrics.csv, in order; metrics.jsonl keeps every key of every record.
CSV_COLUMNS = (
    "round", "status", "accuracy", "loss", "federated_accuracy", "federated_loss", "train_loss",
    "clients_sampled", "clients_succeeded", "clients_failed", "bytes_sent", "bytes_received", "seconds",
    "r2", "federated_r2", "version", "simulated_time", "staleness_mean", "staleness_max",
)


class MetricsWriter(Protocol):
    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class _AppendOnlyFile:
    """A file that grows by whole records only: each record is one ``os.write`` on an ``O_APPEND`` descriptor.

    A write that fails or comes up short (a full disk, a quota) is undone with ``os.ftruncate``, so the
    file never ends in half a record, and the writer stays usable once space is freed. Python's buffered
    files cannot promise this: they may split one record over several writes, and keep what they could
    not write in a buffer that the next flush or close writes out later.
    """

    def __init__(self, path: str | Path, *, truncate: bool) -> None:
        self.path = Path(path)
        # Read access too when keeping the file: its last byte tells whether it ends in a partial record.
        flags = (os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
                 | (os.O_WRONLY | os.O_TRUNC if truncate else os.O_RDWR))
        try:
            self._fd: int | None = os.open(self.path, flags, 0o666)  # 0o666 & ~umask, like open()
        except OSError as e:
            raise CohortError(f"cannot open {self.path} for writing: {e.strerror or e}; "
                              f"choose a writable output folder") from e
        self._torn = False  # the file may end in a partial record (an undo failed, or an earlier process died)
        if not truncate:
            try:
                size = os.fstat(self._fd).st_size
                self._torn = size > 0 and os.pread(self._fd, 1, size - 1) != b"\n"
            except OSError:
                pass

    @property
    def empty(self) -> bool:
        return self._fd is not None and os.fstat(self._fd).st_size == 0

    def append(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed; records cannot be written after close()")
        if self._torn:  # start on a fresh line: the partial record stays alone on its line, which readers skip
            data = b"\n" + data
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # short writes on files: out of space
        except OSError as e:
            try:
                os.ftruncate(self._fd, size)
                self._torn = False
            except OSError:
                self._torn = True
            code = e.errno or errno.EIO
            hint = " (disk full?)" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
            raise CohortError(f"cannot write {self.path}: {os.strerror(code)}{hint}; the run folder "
                              f"{self.path.parent} keeps every record written before") from e
        self._torn = False

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class JsonlWriter:
    """One JSON object per round, each line written whole (never half a line, even on a full disk) and
    at once, so a killed run keeps what it reported."""

    def __init__(self, path: str | Path) -> None:
        self._file = _AppendOnlyFile(path, truncate=False)
        self.path = self._file.path

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(dict(record), default=_json_default) + "\n"
        self._file.append(line.encode("utf-8"))

    def write_many(self, records) -> None:
        """Several records in one write (a round's per-client rows)."""
        lines = "".join(json.dumps(dict(r), default=_json_default) + "\n" for r in records)
        self._file.append(lines.encode("utf-8"))

    def close(self) -> None:
        self._file.close()


class CsvWriter:
    """The main per-round figures as CSV, a blank where a round did not report one; each row written whole.

    A new file starts with the header row; with ``append=True`` an existing file keeps its rows (and its
    header) and gets the new rows after them, as a resumed run needs.
    """

    def __init__(self, path: str | Path, columns: tuple[str, ...] = CSV_COLUMNS, *, append: bool = False) -> None:
        self.columns = tuple(columns)
        self._file = _AppendOnlyFile(path, truncate=not append)
        self.path = self._file.path
        try:
            if self._file.empty:
                self._file.append(self._row(dict(zip(self.columns, self.columns))))
        except BaseException:
            self._file.close()
            raise

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.append(self._row({k: _cell(v) for k, v in record.items()}))

    def _row(self, row: Mapping[str, Any]) -> bytes:
        # csv does the quoting; it writes into memory so that the row reaches the file in one write.
        buf = io.StringIO(newline="")
        csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        return buf.getvalue().encode("utf-8")

    def close(self) -> None:
        self._file.close()


def _cell(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _json_default(v: Any) -> Any:
    """numpy scalars and arrays as plain numbers and lists; anything else is a clear TypeError."""
    if hasattr(v, "item") and getattr(v, "shape", None) == ():
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"metrics record value {v!r} is a {type(v).__name__}; expected numbers, strings, lists or dicts")


def iter_jsonl(path: str | Path, *, strict: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each JSON object line of ``path`` (1-based line numbers).

    Blank lines are skipped. A line that is not a JSON object (a truncated last line from a killed or
    out-of-space run, a ``[1, 2]`` or a ``3``) is skipped with a warning naming the file and line, or
    with ``strict=True`` raises :class:`DataError`.
    """
    path = Path(path)
    with path.open("rb") as f:  # bytes: a line cut inside a UTF-8 character spoils that line only
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            problem = None
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "is not UTF-8 text (a truncated write?)"
            except ValueError:  # json.JSONDecodeError
                problem = f"is not valid JSON (a truncated write?): {_excerpt(raw)}"
            else:
                if not isinstance(value, dict):
                    problem = f"is a JSON {_json_kind(value)}, {_excerpt(raw)}; expected an object {{...}}"
            if problem is None:
                yield number, value
            elif strict:
                raise DataError(f"{path}, line {number}: the line {problem}")
            else:
                warnings.warn(f"{path}, line {number}: the line {problem}; skipped", stacklevel=2)


def read_jsonl(path: str | Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """The JSON object lines of ``path``; bad lines are skipped with a warning (see :func:`iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path, strict=strict)]


def _excerpt(raw: bytes, limit: int = 60) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "literal"
    if isinstance(value, (int, float)):
        return "number" if math.isfinite(value) else "non-finite number"
    return {list: "list", str: "string"}.get(type(value), type(value).__name__)
