"""``data.dataset = "csv"``: CSV files as sites have them, split among clients, preprocessed federatedly.

The partition is natural (one client per value of ``partition_column``, per file of ``client_files``, or
as a ``partition_file`` assigns rows) or synthetic (iid, shards, dirichlet, quantity, after a server test
split). Clients keep names (the column's value, the file's stem). With a natural partition every client
holds out a stratified, seeded share of its rows (``data.holdout_fraction``, 0.2 unless set), as many
rows as ``data.holdout_rows`` gives its name, or the rows its ``data.holdout_column`` marks ``test``
(a benchmark's fixed split), and there is no server test set: the global model is
scored on every site's held-out rows. The sites must agree on what each categorical column holds,
numbers or text (:func:`cohort.data.features.agree_kinds`).

Imputation, z-scoring and one-hot categories use statistics that the clients send as sums and counts of
their *training* rows (:mod:`cohort.data.features`), or, with ``data.statistics = "local"``, each
client's own; they are then applied to every row of that client, held-out rows included.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng
from cohort.data import features as F
from cohort.data.datasets import ArrayDataset, _stratified_pick
from cohort.data.partition import Partition, _offsets
from cohort.data.table import Table, expand_files, read_table


@dataclass(frozen=True, eq=False)
class Sites:
    train: ArrayDataset  # every client's rows (training and held-out), preprocessed
    test: ArrayDataset | None  # the server's test split (synthetic partitions only)
    partition: Partition  # client -> training rows of ``train``
    holdout: Partition | None  # client -> held-out rows
    names: list[str]  # each client's name
    preprocessing: F.Preprocessing  # the federation's (local mode: what the server test set used)


def load_sites(cfg, seed: int, split=None) -> Sites:
    """Read, split and preprocess ``cfg`` (a DataConfig). ``split(train, cfg, seed)`` is the synthetic
    partitioner (the experiment's), called with a dataset of the raw training rows."""
    if cfg.partition == "files":
        files = expand_files(cfg.client_files)
        tables = [read_table(f, cfg.csv_columns, cfg.csv_delimiter) for f in files]
        names = [f.stem for f in files]
        if len(set(names)) != len(names):
            raise DataError(f"data.client_files: two files share a name ({names}); each client is named by its file's stem")
    else:
        tables = [read_table(cfg.csv_path, cfg.csv_columns, cfg.csv_delimiter)]
    enc = F.encode(tables, spec_of(cfg))
    n = len(enc.y)
    test_rows = None
    if cfg.partition == "files":
        sizes = np.array([len(t.rows) for t in tables])
        client_of = np.repeat(np.arange(len(tables)), sizes)
    elif cfg.partition == "column":
        values = [v.strip() for v in tables[0].column(cfg.partition_column)]
        names = sorted(set(values))
        if any(not v for v in names):
            raise DataError(f"{tables[0].source}: column {cfg.partition_column!r} is empty in some rows; every row "
                            "needs its site")
        index = {v: i for i, v in enumerate(names)}
        client_of = np.array([index[v] for v in values])
    elif cfg.partition == "assigned":
        client_of, names = _assigned(Path(cfg.partition_file), n)
    else:  # synthetic: a server test split first, then the partitioner on the rest
        keep, test_rows = _server_split(enc, cfg, seed)
        client_of = np.full(n, -1)
        part = split(ArrayDataset(np.zeros((len(keep), 1), np.float32), enc.y[keep], cfg.csv_task, enc.num_classes), cfg, seed)
        for c in range(len(part)):
            client_of[keep[part[c]]] = c
        names = [str(c) for c in range(len(part))]
    clients = len(names)
    rows_of = [np.flatnonzero(client_of == c) for c in range(clients)]
    if any(len(r) == 0 for r in rows_of):
        raise DataError(f"client {names[[len(r) for r in rows_of].index(0)]!r} has no rows")
    if test_rows is None:  # natural partitions: the sites must agree on their categorical columns' kinds
        spec = spec_of(cfg)
        F.agree_kinds({names[c]: F.category_kinds(tables[c], spec) if cfg.partition == "files"
                       else F.category_kinds(tables[0], spec, rows_of[c]) for c in range(clients)})
    counts = holdout_counts(cfg, names, [len(r) for r in rows_of])
    marked = split_marks(cfg, tables, enc.where)
    train_rows, held_rows = _holdout(rows_of, enc.y, cfg.holdout, seed, cfg.csv_task, counts=counts,
                                     marked=None if marked is None else [marked[r] for r in rows_of], names=names)
    prep, per_client = _preprocess(enc, train_rows, cfg)
    x = np.empty((n, _width(enc, prep)), np.float32)
    for c in range(clients):
        rows = np.concatenate([train_rows[c], held_rows[c]])
        x[rows] = F.transform(enc.numeric, enc.categorical, rows, per_client[c])
    test = None
    if test_rows is not None:
        test = ArrayDataset(F.transform(enc.numeric, enc.categorical, test_rows, prep), enc.y[test_rows], cfg.csv_task,
                            enc.num_classes, name="test")
    assigned = client_of >= 0
    data = ArrayDataset(x[assigned] if test_rows is not None else x, enc.y[assigned] if test_rows is not None else enc.y,
                        cfg.csv_task, enc.num_classes, name=Path(tables[0].source).stem)
    remap = np.cumsum(assigned) - 1  # row -> position among the clients' rows
    partition = Partition(remap[np.concatenate(train_rows)], _offsets(np.array([len(r) for r in train_rows])))
    holdout = (Partition(remap[np.concatenate(held_rows)], _offsets(np.array([len(r) for r in held_rows])))
               if cfg.holds_out else None)
    return Sites(data, test, partition, holdout, names, prep)


def spec_of(cfg) -> F.Spec:
    """How ``cfg`` (a DataConfig) reads the columns."""
    return F.Spec(cfg.csv_target, cfg.csv_task, tuple(cfg.categorical),
                  ((cfg.partition_column,) if cfg.partition == "column" else ()) + ((cfg.holdout_column,) if cfg.holdout_column else ()), tuple(cfg.missing_values),
                  dict(cfg.missing_by_column), cfg.target_binarize, dict(cfg.target_classes), cfg.missing_category)


def _width(enc: F.Encoded, prep: F.Preprocessing) -> int:
    return enc.numeric.shape[1] + sum(len(c) for c in prep.categories.values())


def _server_split(enc: F.Encoded, cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(enc.y)
    n_test = int(np.floor(cfg.test_fraction * n + 0.5))
    if not 1 <= n_test <= n - 1:
        raise DataError(f"data.test_fraction = {cfg.test_fraction} of {n} rows leaves no test or no training rows")
    gen = rng(seed, 0, Stage.SPLIT)
    test = np.sort(_stratified_pick(enc.y, n_test, gen) if cfg.csv_task == "classification" else gen.permutation(n)[:n_test])
    is_test = np.zeros(n, bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), test


def holdout_counts(cfg, names: list[str], sizes: list[int], every_site: bool = True) -> list[int] | None:
    """``data.holdout_rows`` as each client's count of held-out rows (None: the config gives a share),
    checked: every site named, each keeping a training row. ``every_site``: ``names`` are all the
    federation's sites, so a name in the setting that is none of them is refused too (a typo)."""
    if not cfg.holdout_rows:
        return None
    unnamed = [n for n in names if n not in cfg.holdout_rows]
    if unnamed:
        raise DataError(f"data.holdout_rows gives no count for site(s) {unnamed}; it names {sorted(cfg.holdout_rows)}. "
                        "Give every site its held-out rows by its name (a file's stem, the partition column's "
                        "value, or the client of data.partition_file)")
    unknown = sorted(set(cfg.holdout_rows) - set(names)) if every_site else []
    if unknown:
        raise DataError(f"data.holdout_rows names {unknown}, which are no site; the sites are {names}")
    counts = [cfg.holdout_rows[n] for n in names]
    for n, k, size in zip(names, counts, sizes):
        if k > size - 1:
            raise DataError(f"data.holdout_rows holds out {k} rows of site {n!r}, which has {size}; at most "
                            f"{size - 1} (a site keeps at least one training row)")
    return counts


SPLIT_VALUES = {"train": False, "test": True}


def split_marks(cfg, tables: list[Table], where: list[tuple[str, int]]) -> np.ndarray | None:
    """``data.holdout_column`` as one flag per row of ``tables`` (in order): True where it says ``test``.
    None when the config chooses held-out rows another way."""
    if not cfg.holdout_column:
        return None
    cells = [v.strip().lower() for t in tables for v in t.column(cfg.holdout_column)]
    for cell, (source, line) in zip(cells, where):
        if cell not in SPLIT_VALUES:
            raise DataError(f"{source}, line {line}, column {cfg.holdout_column!r} (data.holdout_column): {cell!r} is "
                            "neither 'train' nor 'test'; mark every row with one of them")
    return np.array([SPLIT_VALUES[c] for c in cells], bool)


def _holdout(rows_of: list[np.ndarray], y: np.ndarray, fraction: float, seed: int, task: str, ids=None, counts=None,
             marked: list[np.ndarray] | None = None, names: list[str] | None = None):
    """Each client's (training, held-out) rows: a seeded share, stratified by class for classification;
    a client of 2 rows or more keeps at least one of each. ``counts``: each client's held-out rows
    instead of a share (checked by :func:`holdout_counts`), drawn the same way. ``marked``: each
    client's flags from its split column (:func:`split_marks`), taken as they are; a client must keep a
    training row. ``ids``: the clients' ids (default 0, 1, ...); ``names``: their names, for messages."""
    train, held = [], []
    for i, (c, rows) in enumerate(zip(range(len(rows_of)) if ids is None else ids, rows_of)):
        if marked is not None:
            if marked[i].all():
                who = names[i] if names else c
                raise DataError(f"site {who!r}: data.holdout_column marks all its {len(rows)} rows 'test'; a site "
                                "keeps at least one 'train' row")
            train.append(rows[~marked[i]])
            held.append(rows[marked[i]])
            continue
        if counts is not None:
            k = counts[i]
        else:
            k = int(np.floor(fraction * len(rows) + 0.5))
            k = min(max(k, 1 if fraction > 0 and len(rows) >= 2 else 0), max(len(rows) - 1, 0))
        gen = rng(seed, 0, Stage.HOLDOUT, c)
        pick = (_stratified_pick(y[rows], k, gen) if task == "classification" else gen.permutation(len(rows))[:k]) if k else []
        mask = np.zeros(len(rows), bool)
        mask[np.asarray(pick, np.int64)] = True
        train.append(rows[~mask])
        held.append(rows[mask])
    return train, held


def _preprocess(enc: F.Encoded, train_rows: list[np.ndarray], cfg) -> tuple[F.Preprocessing, list[F.Preprocessing]]:
    """The federation's preprocessing from the clients' statistics (sums and counts of their training
    rows), and the one each client applies (the same, or its own with statistics = "local")."""
    stats = [F.client_statistics(enc.numeric[r], F.rows_of(enc.categorical, r)) for r in train_rows]
    total = F.combine(stats)
    F.refuse_missing(enc, cfg.impute)
    median = None
    if cfg.impute == "median":  # the second exchange: histograms over the federation's range
        hist = sum(F.histogram(enc.numeric[r], total.low, total.high) for r in train_rows)
        median = F.median_from(hist, total.low, total.high)
    categories = {n: F.category_order(c) for n, c in total.categories.items()}
    glob = F.preprocessing(total, cfg.impute, cfg.impute_value, cfg.standardize, median, categories)
    if cfg.statistics == "federated":
        return glob, [glob] * len(train_rows)
    return glob, [own_preprocessing(enc.numeric[r], s, cfg, categories) for r, s in zip(train_rows, stats)]


def own_preprocessing(numeric: np.ndarray, stats: F.ClientStats, cfg, categories) -> F.Preprocessing:
    """``data.statistics = "local"``: a client's fill values and z-scores from its own training rows
    ``numeric`` (its exact median), with the federation's one-hot ``categories``."""
    own_median = None
    if cfg.impute == "median":
        own_median = np.array([np.median(c[~np.isnan(c)]) if (~np.isnan(c)).any() else 0.0 for c in numeric.T])
    return F.preprocessing(stats, cfg.impute, cfg.impute_value, cfg.standardize, own_median, categories)


def _assigned(path: Path, n: int) -> tuple[np.ndarray, list[str]]:
    """``partition_file``: a CSV with a header ``row,client``: each row index (0-based, in file order)
    and its client's name; every row of the data exactly once."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except OSError as e:
        raise DataError(f"data.partition_file {str(path)!r} cannot be read: {e}") from e
    if not lines or [h.strip() for h in lines[0]] != ["row", "client"]:
        raise DataError(f"data.partition_file {str(path)!r}: the first line must be the header 'row,client'")
    client_of = np.full(n, -1)
    names: dict[str, int] = {}
    for k, fields in enumerate(lines[1:], start=2):
        if not any(f.strip() for f in fields):
            continue
        try:
            row, name = int(fields[0]), fields[1].strip()
        except (ValueError, IndexError):
            raise DataError(f"{path}, line {k}: expected 'row,client' with an integer row; got {fields}") from None
        if not 0 <= row < n or client_of[row] != -1 or not name:
            raise DataError(f"{path}, line {k}: row {row} is out of 0..{n - 1}, listed twice, or has no client")
        client_of[row] = names.setdefault(name, len(names))
    if (client_of < 0).any():
        raise DataError(f"{path}: rows {np.flatnonzero(client_of < 0)[:5].tolist()}... have no client; list every row")
    order = sorted(names, key=names.get)
    return client_of, order


def check_csv(cfg) -> None:
    if cfg.partition in ("shards", "dirichlet") and cfg.csv_task != "classification":
        raise ConfigError(f"data.partition = {cfg.partition!r} splits by class label; the target is a regression one")


__all__ = ["Sites", "Table", "load_sites"]
