"""From a table's cells to model inputs, with statistics computed federatedly.

- :func:`encode`: numeric columns become float64 with NaN where a cell is missing (empty, a declared
  missing-value code, or a per-column code such as ``0`` where 0 is impossible), declared categorical
  columns become canonical categories (below), and the target is mapped (``binarize = "> 0"``, a
  value-to-class table, or its distinct values in order).
- Categories are canonical (:mod:`cohort.data.categories`): ``1``, ``1.0`` and `` 1`` are one
  category of a numeric-valued column, and a missing cell is none unless ``missing_category`` asks.
- :func:`client_statistics` is what one client sends: for each numeric column its count, mean and sum
  of squared deviations (Chan et al.'s parallel form of sums and counts, stable in floating point), its
  min and max, and for each categorical column its value counts. Never a row.
- :func:`combine` gives the federation's statistics; with ``impute = "median"`` a second exchange sends
  histograms over the federation's range (a quantile sketch: the median lands within one bin, 1/4096 of
  the range, of the middle values).
- :func:`transform` applies them, identically on every client: imputation, z-scoring, one-hot columns.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np

from cohort.core.errors import ConfigError, DataError
from cohort.data.categories import (  # noqa: F401  (re-exported: the sites and the exchanges use them as F.*)
    MISSING, agree_kinds, canonical_number, categories_of, category_kinds, category_order, check_declared, missing_codes,
)
from cohort.data.categories import is_number as _is_number
from cohort.data.table import ALWAYS_MISSING, Table

BINS = 4096
COMPARISONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}


@dataclass(frozen=True)
class Spec:
    """How to read the columns (from ``[data]``)."""

    target: str
    task: str = "classification"
    categorical: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # columns that are not features (the partition column)
    missing_values: tuple[str, ...] = ()
    missing_by_column: dict[str, tuple[str, ...]] = field(default_factory=dict)
    binarize: str = ""
    classes: dict[str, int] = field(default_factory=dict)
    missing_category: bool = False  # a missing categorical cell is the category MISSING (else no category)


@dataclass(frozen=True, eq=False)
class Encoded:
    numeric: np.ndarray  # (n, p) float64, NaN where missing
    numeric_names: list[str]
    categorical: dict[str, list[str | None]]  # name -> n canonical values, None where missing (MISSING if asked)
    y: np.ndarray
    num_classes: int
    where: list[tuple[str, int]]  # (file, line) of every row, for messages


def parse_binarize(rule: str) -> tuple[str, float]:
    text = rule.strip()
    for op in sorted(COMPARISONS, key=len, reverse=True):
        if text.startswith(op):
            try:
                return op, float(text[len(op):])
            except ValueError:
                break
    raise ConfigError(f"data.target_binarize is {rule!r}; expected a comparison with a number, e.g. \"> 0\" "
                      f"(operators {', '.join(COMPARISONS)})")


def encode(tables: list[Table], spec: Spec, labels: list[str] | None = None) -> Encoded:
    """Every table's rows, in order, as numbers, categories and targets; the tables must share columns.
    ``labels``: the federation's class values in class order (a site that holds only its own rows, see
    :func:`label_vocabulary`); None: the distinct values of these tables."""
    columns = tables[0].columns
    for t in tables[1:]:
        if sorted(t.columns) != sorted(columns):
            raise DataError(f"{t.source} has columns {t.columns}; {tables[0].source} has {columns}: every client's "
                            "file needs the same columns")
    for name in (spec.target, *spec.categorical, *spec.exclude, *spec.missing_by_column):
        if name not in columns:
            raise DataError(f"{tables[0].source}: no column {name!r}; its columns are {columns}")
    if spec.target in spec.categorical:
        raise ConfigError(f"data.categorical lists the target {spec.target!r}; the target is mapped by "
                          "data.target_binarize or data.target_classes")
    where = [(t.source, line) for t in tables for line in t.lines]
    cells = {name: [v.strip() for t in tables for v in t.column(name)] for name in columns}
    numeric_names = [c for c in columns if c not in (spec.target, *spec.categorical, *spec.exclude)]
    numeric = np.empty((len(where), len(numeric_names)), np.float64)
    for j, name in enumerate(numeric_names):
        missing = {*ALWAYS_MISSING, *spec.missing_values, *spec.missing_by_column.get(name, ())}
        for i, cell in enumerate(cells[name]):
            numeric[i, j] = np.nan if cell in missing else _number(cell, name, where[i])
    categorical = {name: categories_of(cells[name], missing_codes(spec, name), spec.missing_category)
                   for name in spec.categorical}
    y, num_classes = _target(cells[spec.target], spec, where, labels)
    return Encoded(numeric, numeric_names, categorical, y, num_classes, where)


def _number(cell: str, column: str, where: tuple[str, int]) -> float:
    try:
        x = float(cell)
    except ValueError:
        raise DataError(f"{where[0]}, line {where[1]}, column {column!r}: {cell!r} is not a number. If it marks a "
                        f"missing value, add it to data.missing_values; if the column holds categories, list it in "
                        f"data.categorical") from None
    if math.isinf(x):
        raise DataError(f"{where[0]}, line {where[1]}, column {column!r}: {cell!r} is infinite")
    return x  # NaN ("nan" in the file) counts as missing


def _target(values: list[str], spec: Spec, where: list[tuple[str, int]],
            labels: list[str] | None = None) -> tuple[np.ndarray, int]:
    missing = {*ALWAYS_MISSING, *spec.missing_values, *spec.missing_by_column.get(spec.target, ())}
    for i, v in enumerate(values):
        if v in missing:
            raise DataError(f"{where[i][0]}, line {where[i][1]}: the target {spec.target!r} is missing ({v!r}); "
                            "every row needs a target (remove the row from the file)")
    def number(v: str, w: tuple[str, int]) -> float:
        x = _number(v, spec.target, w)
        if math.isnan(x):
            raise DataError(f"{w[0]}, line {w[1]}: the target {spec.target!r} is missing ({v!r}); every row needs a "
                            "target (remove the row from the file)")
        return x

    if spec.task == "regression":
        return np.array([number(v, w) for v, w in zip(values, where)], np.float32), 0
    if spec.binarize:
        op, threshold = parse_binarize(spec.binarize)
        nums = [number(v, w) for v, w in zip(values, where)]
        return np.array([int(COMPARISONS[op](x, threshold)) for x in nums], np.int64), 2
    if spec.classes:
        unknown = sorted({v for v in values if v not in spec.classes})
        if unknown:
            raise DataError(f"target {spec.target!r} has values {unknown[:10]} that data.target_classes does not map; "
                            f"it maps {sorted(spec.classes)}")
        k = max(spec.classes.values()) + 1
        return np.array([spec.classes[v] for v in values], np.int64), k
    if labels is None:
        for v, w in zip(values, where):
            if _is_number(v):
                number(v, w)  # "nan" is a missing target, not a class
        labels = label_vocabulary(values)
        if len(labels) < 2:
            raise DataError(f"target {spec.target!r} has {len(labels)} distinct value(s) {labels}; classification "
                            "needs at least 2")
    numeric = all(_is_number(v) for v in labels)
    code = {(float(v) if numeric else v): i for i, v in enumerate(labels)}
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        k = code.get(float(v) if numeric and _is_number(v) else v)
        if k is None:
            unknown = sorted({u for u in values if (float(u) if numeric and _is_number(u) else u) not in code})
            raise DataError(f"target {spec.target!r} has values {unknown[:10]} that no site had when the federation "
                            f"agreed its classes {labels[:20]}; map the target with data.target_classes")
        out[i] = k
    return out, len(labels)


def label_vocabulary(values) -> list[str]:
    """The classes of distinct target values, in class order: numeric values in numeric order (``1`` and
    ``1.0`` are one class), else the texts in sorted order. Every site maps its targets with it."""
    distinct = sorted(set(values))
    if all(_is_number(v) for v in distinct):
        by_value: dict[float, str] = {}
        for v in distinct:
            by_value.setdefault(float(v), v)
        return [by_value[k] for k in sorted(by_value)]
    return distinct


# ------------------------------------------------------------------------------ federated statistics

@dataclass(frozen=True)
class ClientStats:
    """What one client sends: per numeric column count, mean, M2 (sum of squared deviations from its
    mean), min, max; per categorical column its value counts."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray
    categories: dict[str, dict[str, int]]


def rows_of(categorical: dict[str, list[str | None]], rows) -> dict[str, list[str | None]]:
    """Each categorical column's values at ``rows`` (a client's training rows)."""
    return {name: [values[i] for i in rows] for name, values in categorical.items()}


def refuse_missing(enc: Encoded, impute: str) -> None:
    """``impute = "none"``: a missing numeric cell is refused, naming its column, file and line."""
    if impute == "none" and np.isnan(enc.numeric).any():
        j = int(np.flatnonzero(np.isnan(enc.numeric).any(axis=0))[0])
        i = int(np.flatnonzero(np.isnan(enc.numeric[:, j]))[0])
        raise DataError(f"column {enc.numeric_names[j]!r} has missing values (first at {enc.where[i][0]}, line "
                        f"{enc.where[i][1]}); set data.impute = 'mean', 'median' or 'constant' (with data.impute_value)")


def client_statistics(numeric: np.ndarray, categorical: dict[str, list[str | None]]) -> ClientStats:
    observed = ~np.isnan(numeric)
    count = observed.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(numeric, axis=0) / np.maximum(count, 1), 0.0)
        m2 = np.nansum(np.where(observed, (numeric - mean) ** 2, 0.0), axis=0)
    low = np.where(count > 0, np.nanmin(np.where(observed, numeric, np.inf), axis=0), np.inf)
    high = np.where(count > 0, np.nanmax(np.where(observed, numeric, -np.inf), axis=0), -np.inf)
    cats = {name: _counts(values) for name, values in categorical.items()}
    return ClientStats(count, mean, m2, low, high, cats)


def _counts(values: list[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        if v is not None:
            out[v] = out.get(v, 0) + 1
    return out


def combine(stats: list[ClientStats]) -> ClientStats:
    """The federation's statistics from its clients' (Chan et al.'s pairwise update, column by column)."""
    count, mean, m2 = stats[0].count.copy(), stats[0].mean.copy(), stats[0].m2.copy()
    for s in stats[1:]:
        total = count + s.count
        delta = s.mean - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, s.count / np.maximum(total, 1), 0.0)
        mean = mean + delta * share
        m2 = m2 + s.m2 + delta ** 2 * count * share
        count = total
    cats: dict[str, dict[str, int]] = {}
    for s in stats:
        for name, counts in s.categories.items():
            for v, c in counts.items():
                cats.setdefault(name, {})[v] = cats.get(name, {}).get(v, 0) + c
    low = np.min([s.low for s in stats], axis=0)
    high = np.max([s.high for s in stats], axis=0)
    return ClientStats(count, mean, m2, low, high, cats)


def histogram(numeric: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """One client's second message for the median: counts of each column's values in BINS equal bins
    over the federation's [low, high]."""
    out = np.zeros((numeric.shape[1], BINS), np.int64)
    for j in range(numeric.shape[1]):
        col = numeric[:, j][~np.isnan(numeric[:, j])]
        if col.size and high[j] > low[j]:
            idx = np.clip(((col - low[j]) / (high[j] - low[j]) * BINS).astype(np.int64), 0, BINS - 1)
            out[j] = np.bincount(idx, minlength=BINS)
    return out


def median_from(hist: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Each column's median read off the summed histograms, interpolated within its bin."""
    out = np.zeros(hist.shape[0])
    for j, h in enumerate(hist):
        n = h.sum()
        if n == 0 or not high[j] > low[j]:
            out[j] = low[j] if np.isfinite(low[j]) else 0.0
            continue
        cum = np.cumsum(h)
        b = int(np.searchsorted(cum, n / 2))
        before = cum[b - 1] if b else 0
        width = (high[j] - low[j]) / BINS
        out[j] = low[j] + width * (b + (n / 2 - before) / max(h[b], 1))
    return out


@dataclass(frozen=True)
class Preprocessing:
    """What every client applies: fill values, z-score mean and std, and the one-hot categories."""

    fill: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    categories: dict[str, list[str]]
    standardize: bool


def preprocessing(stats: ClientStats, impute: str, impute_value: float, standardize: bool,
                  median: np.ndarray | None = None, categories: dict[str, list[str]] | None = None) -> Preprocessing:
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(np.where(stats.count > 0, stats.m2 / np.maximum(stats.count, 1), 1.0))
    std = np.where((std > 0) & np.isfinite(std), std, 1.0)
    fill = {"mean": stats.mean, "median": median if median is not None else stats.mean,
            "constant": np.full_like(stats.mean, impute_value), "none": stats.mean}[impute]
    cats = categories if categories is not None else {n: category_order(c) for n, c in stats.categories.items()}
    return Preprocessing(np.asarray(fill, np.float64), stats.mean, std, cats, standardize)


def transform(numeric: np.ndarray, categorical: dict[str, list[str | None]], rows: np.ndarray, p: Preprocessing) -> np.ndarray:
    """Rows ``rows`` as float32 model inputs: missing cells filled, z-scored, then one-hot columns (a
    missing or unseen category is all zeros)."""
    x = numeric[rows].copy()
    holes = np.isnan(x)
    x[holes] = np.take(p.fill, np.nonzero(holes)[1])
    if p.standardize:
        x = (x - p.mean) / p.std
    parts = [x]
    for name, cats in p.categories.items():
        index = {c: k for k, c in enumerate(cats)}
        onehot = np.zeros((len(rows), len(cats)))
        for i, r in enumerate(rows):
            k = index.get(categorical[name][r])
            if k is not None:
                onehot[i, k] = 1.0
        parts.append(onehot)
    return np.concatenate(parts, axis=1).astype(np.float32)
