"""CSV files as they come from sites: with or without a header row, with missing-value codes.

:func:`read_table` reads cells as text and says where a file is wrong (file, line, column); turning
cells into numbers, categories and a target is :mod:`cohort.data.features`'s work.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from cohort.core.errors import ConfigError, DataError

ALWAYS_MISSING = ("",)  # an empty cell is missing in every column


@dataclass(frozen=True, eq=False)
class Table:
    """A file's cells as text, as written: ``rows[i][j]`` is row i's value of ``columns[j]``; ``lines[i]`` its line."""

    source: str
    columns: list[str]
    rows: list[list[str]]
    lines: list[int]

    def column(self, name: str) -> list[str]:
        if name not in self.columns:
            raise DataError(f"{self.source}: no column {name!r}; its columns are {self.columns}")
        j = self.columns.index(name)
        return [row[j] for row in self.rows]


def _looks_numeric(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def read_table(path: str | os.PathLike[str], columns: tuple[str, ...] | list[str] = (), delimiter: str = ",") -> Table:
    """The cells of a CSV file. With ``columns`` the file has no header row and these name its fields;
    without, its first row names them, and a first row of numbers only is refused (it is data read as a
    header: give the columns)."""
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"":
        raise ConfigError(f"data.csv_delimiter is {delimiter!r}; expected one character such as ',', ';' or '\\t'")
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = list(columns) if columns else next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty; expected a header row naming the columns, or data with "
                                "data.csv_columns given")
            header = [name.strip() for name in header]
            if not columns and header and all(_looks_numeric(h) for h in header if h):
                raise DataError(f"{path}: the first row {header[:6]} looks like data, not a header (every field is a "
                                "number). If the file has no header row, name its columns with data.csv_columns = "
                                "[\"age\", \"sex\", ...]")
            if not all(header) or len(set(header)) != len(header):
                duplicates = sorted({n for n in header if header.count(n) > 1})
                raise DataError(f"{path}: column names must be distinct (no duplicate) and non-empty; got {header}"
                                + (f" (repeated: {duplicates})" if duplicates else ""))
            rows, lines = [], []
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields; expected {len(header)} "
                                    f"({'data.csv_columns' if columns else 'the header'} names {len(header)})")
                rows.append(row)  # as written; readers strip what they compare
                lines.append(reader.line_num)
    except FileNotFoundError as e:
        raise DataError(f"CSV file not found: {path}") from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV file {path}: {e}") from e
    if not rows:
        raise DataError(f"{path}: no data rows; expected at least 1")
    return Table(str(path), header, rows, lines)


def expand_files(patterns: tuple[str, ...] | list[str]) -> list[Path]:
    """``data.client_files``: paths and glob patterns, each pattern expanded in sorted order; every file
    once, every pattern matching something."""
    out: list[Path] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise DataError(f"data.client_files: {pattern!r} matches no file (patterns are taken from the working "
                            f"folder, {os.getcwd()!r})")
        for f in found:
            p = Path(f)
            if not p.is_file():
                raise DataError(f"data.client_files: {str(p)!r} is not a file")
            if p.resolve() in {q.resolve() for q in out}:
                raise DataError(f"data.client_files: {str(p)!r} is listed twice; each file is one client")
            out.append(p)
    return out
