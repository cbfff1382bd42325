"""Small tabular datasets: scikit-learn's bundled copies and CSV files with a header row."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cohort.core.errors import ConfigError, DataError
from cohort.data.datasets import TASKS, ArrayDataset


def load_breast_cancer() -> ArrayDataset:
    """Wisconsin breast cancer (569 examples, 30 float32 features, 2 classes), bundled with scikit-learn."""
    from sklearn import datasets  # imported here: scikit-learn is slow to import and only these need it

    x, y = datasets.load_breast_cancer(return_X_y=True)
    return ArrayDataset(x=x.astype(np.float32), y=y.astype(np.int64), task="classification", num_classes=2,
                        name="breast_cancer")


def load_diabetes() -> ArrayDataset:
    """Diabetes progression (442 examples, 10 float32 features, float32 regression target), from scikit-learn."""
    from sklearn import datasets

    x, y = datasets.load_diabetes(return_X_y=True)
    return ArrayDataset(x=x.astype(np.float32), y=y.astype(np.float32), task="regression", name="diabetes")


def load_csv(
    path: str | os.PathLike[str],
    target: str,
    *,
    task: str = "classification",
    delimiter: str = ",",
) -> ArrayDataset:
    """A dataset from a CSV file whose first row names the columns; ``target`` names the label column.

    Features must be numbers and become float32. Classification labels (numbers or strings) map to
    0..k-1 in sorted order of their distinct values (numeric order when all are numbers); regression
    targets become float32.
    """
    if task not in TASKS:
        raise ConfigError(f"task={task!r}; expected one of {TASKS}")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"":
        raise ConfigError(f"delimiter={delimiter!r}; expected one character such as ',', ';' or '\\t' "
                          f"(not a quote or a line break)")
    path = Path(path)
    header, rows = _read_rows(path, delimiter)
    if target not in header:
        raise DataError(f"{path}: target column {target!r} not in the header; columns are {header}")
    t = header.index(target)
    features = [(j, name) for j, name in enumerate(header) if j != t]
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    for i, (line, row) in enumerate(rows):
        for k, (j, name) in enumerate(features):
            x[i, k] = _number(row[j], path, name, line)
    raw_y = [row[t] for _, row in rows]
    if task == "regression":
        y = np.array([_number(v, path, target, line) for v, (line, _) in zip(raw_y, rows)], dtype=np.float32)
        return ArrayDataset(x=x, y=y, task="regression", name=path.stem)
    for value, (line, _) in zip(raw_y, rows):
        _check_label(value, path, target, line)
    y, num_classes = _encode_labels(raw_y, path, target)
    return ArrayDataset(x=x, y=y, task="classification", num_classes=num_classes, name=path.stem)


def _read_rows(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank data rows, each with its 1-based line number in the file."""
    from cohort.data.table import read_table

    table = read_table(path, (), delimiter)
    return table.columns, list(zip(table.lines, table.rows))


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(value: str, path: Path, column: str, line: int) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{path}, line {line}, column {column!r}: value {value!r} is not a number") from None
    if math.isnan(number):
        raise DataError(f"{path}, line {line}, column {column!r}: value {value!r} is a missing value (NaN)")
    if not abs(number) <= FLOAT32_MAX:
        raise DataError(f"{path}, line {line}, column {column!r}: value {value!r} is infinite or beyond float32's range")
    return number


def _check_label(value: str, path: Path, column: str, line: int) -> None:
    """Refuse a class label that is a missing value, as :func:`_number` refuses one among the features:
    an empty cell, NaN (which would become a class of its own) or an infinite number."""
    if not value.strip():
        raise DataError(f"{path}, line {line}, column {column!r}: the label is empty")
    try:
        number = float(value)
    except ValueError:
        return  # a string label such as 'setosa'
    if math.isnan(number):
        raise DataError(f"{path}, line {line}, column {column!r}: label {value!r} is a missing value (NaN); "
                        f"expected a class label")
    if math.isinf(number):
        raise DataError(f"{path}, line {line}, column {column!r}: label {value!r} is infinite; expected a class label")


def _encode_labels(raw: list[str], path: Path, target: str) -> tuple[np.ndarray, int]:
    values = [v.strip() for v in raw]  # every label passed _check_label: no NaN, no inf
    try:
        keys: list = [float(v) for v in values]
    except ValueError:
        keys = values  # at least one label is not a number: sort them all as strings
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise DataError(f"{path}: target column {target!r} has {len(distinct)} distinct value(s) {distinct}; "
                        f"classification needs at least 2")
    code = {key: i for i, key in enumerate(distinct)}
    return np.array([code[key] for key in keys], dtype=np.int64), len(distinct)
