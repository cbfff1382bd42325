"""Sites that hold their own files, and a server that holds none: the statistics exchange of a deployment.

In simulation :func:`cohort.data.sites.load_sites` reads every site's rows in one process and computes
the same statistics. In a deployment (``cohort server`` with a CSV config and a natural partition) the
server never reads a row. Before round 1 it asks every connected client, on the open task set:

1. ``data_schema``: the site's name, its columns, (for a target without a mapping) its distinct
   target values, and what its categorical columns hold, numbers or text, with an example value
   (:func:`cohort.data.features.category_kinds`). The server agrees the column order and the classes,
   and stops, naming two sites, where they disagree on a column's kind.
2. ``data_statistics``: per numeric column the count, mean, M2, min and max of the site's *training*
   rows, and its categories' counts (:func:`cohort.data.features.client_statistics`). Never a row.
3. ``data_histogram`` (``impute = "median"`` only): counts in 4,096 bins over the federation's range.

The result, an :class:`Agreement`, goes out in every later message's config (the ``site`` record's ``agreement``): the
columns, classes, fill values, z-score means and standard deviations and one-hot categories. Every
site applies it with :func:`cohort.data.features.transform`, exactly as the simulation does, so the
two give the same bits. How a site is asked, and its answers checked, is :mod:`cohort.data.answers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from cohort.core.errors import ConfigError, DataError
from cohort.core.records import SITE, merged, record
from cohort.core.types import Reply
from cohort.data import features as F
from cohort.data.answers import GROUP, MAX_CATEGORIES, ask, check_categories, from_json_bytes, row_counts, to_json_bytes
from cohort.data.table import Table

TASKS = ("data_schema", "data_statistics", "data_histogram", "data_categories", "data_spread")
AGREEMENT = "agreement"  # the key of the site record (cohort.core.records.SITE) that carries the agreement
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Agreement:
    """What the sites agreed, server side: who they are and how every site prepares its rows."""

    num_clients: int  # the federation's clients (ids 0 .. num_clients - 1)
    names: dict[int, str]  # client id -> site name (the clients that took part)
    train_sizes: dict[int, int]
    held_sizes: dict[int, int]
    columns: list[str]  # every column of the files, in the agreed order
    labels: list[str] | None  # the classes' target values (None: the config maps the target, or regression)
    num_classes: int
    preprocessing: F.Preprocessing  # the federation's
    local: bool  # data.statistics = "local": each site z-scores and fills with its own statistics

    @property
    def width(self) -> int:
        return len(self.preprocessing.mean) + sum(len(c) for c in self.preprocessing.categories.values())

    def to_json(self) -> str:
        """The agreement as the run folder keeps it (``sites.json``): a resumed server reuses it."""
        return json.dumps({"num_clients": self.num_clients, "names": {str(k): v for k, v in self.names.items()},
                           "train_sizes": {str(k): v for k, v in self.train_sizes.items()},
                           "held_sizes": {str(k): v for k, v in self.held_sizes.items()},
                           "site_data": self.message_config()}, indent=1)  # (the file's key since its first version)

    @classmethod
    def from_json(cls, text: str, where: str = "sites.json") -> "Agreement":
        try:
            d = json.loads(text)
            columns, labels, num_classes, prep, local = read_agreement(d["site_data"])
            ints = {k: {int(c): v for c, v in d[k].items()} for k in ("names", "train_sizes", "held_sizes")}
            return cls(int(d["num_clients"]), ints["names"], ints["train_sizes"], ints["held_sizes"], columns, labels,
                       num_classes, prep, local)
        except (ValueError, KeyError, TypeError, AttributeError, DataError) as e:
            raise DataError(f"{where} (the sites' agreement this run was started with) is damaged: {e}") from None

    def message_config(self) -> dict:
        p = self.preprocessing
        return {"columns": self.columns, "labels": self.labels, "num_classes": self.num_classes,
                "fill": p.fill.tolist(), "mean": p.mean.tolist(), "std": p.std.tolist(),
                "categories": p.categories, "standardize": p.standardize, "local": self.local}


def read_agreement(d) -> tuple[list[str], list[str] | None, int, F.Preprocessing, bool]:
    """A site's side of :meth:`Agreement.message_config`, checked: (columns, labels, classes,
    preprocessing, local)."""
    try:
        p = len(d["fill"])
        arrays = [np.asarray(d[k], np.float64) for k in ("fill", "mean", "std")]
        ok = (all(a.shape == (p,) and np.isfinite(a).all() for a in arrays) and (arrays[2] > 0).all()
              and isinstance(d["columns"], list) and all(isinstance(c, str) for c in d["columns"])
              and isinstance(d["categories"], dict)
              and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in d["categories"].values())
              and (d["labels"] is None or (isinstance(d["labels"], list) and all(isinstance(x, str) for x in d["labels"])))
              and isinstance(d["num_classes"], int) and d["num_classes"] >= 0)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"the server's agreement (how to prepare this site's rows) is malformed; is it a cohort server "
                        "of the same version?")
    prep = F.Preprocessing(arrays[0], arrays[1], arrays[2], {k: list(v) for k, v in d["categories"].items()},
                           bool(d["standardize"]))
    return list(d["columns"]), d["labels"], int(d["num_classes"]), prep, bool(d.get("local", False))


# --------------------------------------------------------------------------------------- server side

def agree(channel, num_clients: int, cfg, timeout_s: float | None, secure=None, seed: int = 0) -> Agreement:
    """Run the exchange over ``channel`` with the clients connected to it; raise DataError, naming each
    site and what was wrong, unless every one of them answered every step. ``secure``: the run's
    :class:`cohort.secagg.SecureAggregation`; the statistics then travel only as sums
    (:mod:`cohort.data.exchange_secure`)."""
    ids = [c for c in channel.available() if c < num_clients]
    if not ids:
        raise DataError("no client is connected to agree the data with")
    schemas = ask(channel, "data_schema", {}, ids, timeout_s, lambda r, cid: _schema(r, cfg))
    first = schemas[ids[0]]
    for cid, s in schemas.items():
        if sorted(s["columns"]) != sorted(first["columns"]):
            raise DataError(f"site {s['name']!r} (client {cid}) has columns {s['columns']}; site {first['name']!r} "
                            f"(client {ids[0]}) has {first['columns']}: every site's file needs the same columns")
    names = {cid: s["name"] for cid, s in schemas.items()}
    if len(set(names.values())) != len(names):
        raise DataError(f"two sites share a name ({sorted(names.values())}); give each client its own --name")
    F.agree_kinds({names[cid]: schemas[cid]["kinds"] for cid in ids})  # as load_sites: numbers or text, everywhere
    columns = first["columns"]
    mapped = cfg.csv_task == "regression" or cfg.target_binarize or cfg.target_classes
    labels = None if mapped else F.label_vocabulary([v for s in schemas.values() for v in s["labels"]])
    if labels is not None and len(labels) > MAX_CATEGORIES:
        raise DataError(f"the sites' target {cfg.csv_target!r} has {len(labels):,} distinct values; at most "
                        f"{MAX_CATEGORIES:,} classes (map the target with data.target_classes or data.target_binarize)")
    if labels is not None and len(labels) < 2:
        raise DataError(f"the sites' target {cfg.csv_target!r} has {len(labels)} distinct value(s) {labels}; "
                        "classification needs at least 2")
    agreed = {SITE: {"columns": columns, "labels": labels}}
    if secure is not None:
        from cohort.data.exchange_secure import secure_statistics

        kinds = {cid: schemas[cid]["kinds"] for cid in ids}
        total, median, sizes = secure_statistics(channel, ids, cfg, agreed, timeout_s, secure, seed, kinds)
        train_sizes, held_sizes = ({c: sizes[c][k] for c in ids} for k in (0, 1))
    else:
        stats = ask(channel, "data_statistics", agreed, ids, timeout_s,
                    lambda r, cid: _statistics(r, cfg, schemas[cid]["kinds"]))
        p = len(next(iter(stats.values()))[0].mean)
        if any(len(s.mean) != p for s, _, _ in stats.values()):
            raise DataError("the sites sent statistics of different numbers of columns")
        total = F.combine([stats[c][0] for c in ids])
        median = None
        if cfg.impute == "median":
            config = merged(agreed, {SITE: {"low": total.low.tolist(), "high": total.high.tolist()}})
            hists = ask(channel, "data_histogram", config, ids, timeout_s, lambda r, cid: _histogram(r, stats[cid][0].count))
            median = F.median_from(sum(hists[c] for c in ids), total.low, total.high)
        train_sizes, held_sizes = {c: stats[c][1] for c in ids}, {c: stats[c][2] for c in ids}
    categories = {n: F.category_order(c) for n, c in total.categories.items()}  # as load_sites: the same columns, in the same order
    wide = [n for n, c in categories.items() if len(c) > MAX_CATEGORIES]
    if wide:
        raise DataError(f"categorical column {wide[0]!r} has {len(categories[wide[0]]):,} values across the sites; at "
                        f"most {MAX_CATEGORIES:,} (is it really categorical?)")
    prep = F.preprocessing(total, cfg.impute, cfg.impute_value, cfg.standardize, median, categories)
    num_classes = (0 if cfg.csv_task == "regression" else 2 if cfg.target_binarize
                   else max(cfg.target_classes.values()) + 1 if cfg.target_classes else len(labels))
    return Agreement(num_clients, names, train_sizes, held_sizes, columns, labels, num_classes, prep, cfg.statistics == "local")


def _schema(r: Reply, cfg) -> dict:
    s = from_json_bytes(r.arrays[GROUP].get("schema"), "the schema")
    if not (isinstance(s, dict) and isinstance(s.get("name"), str) and 0 < len(s["name"]) <= 200
            and isinstance(s.get("columns"), list) and s["columns"] and all(isinstance(c, str) for c in s["columns"])
            and len(s["columns"]) <= 100_000 and all(len(c) <= 200 for c in s["columns"])
            and isinstance(s.get("labels"), list) and all(isinstance(v, str) and len(v) <= 200 for v in s["labels"])
            and len(s["labels"]) <= MAX_CATEGORIES):
        raise ValueError("its schema is not {name, columns, labels, kinds} with a name of 1 to 200 characters")
    kinds = s.get("kinds")
    if not (isinstance(kinds, dict) and all(
            name in cfg.categorical and isinstance(k, list) and len(k) == 2 and k[0] in ("number", "text")
            and isinstance(k[1], str) and len(k[1]) <= 200 for name, k in kinds.items())):
        raise ValueError("its schema's kinds are not {column: [\"number\" or \"text\", example]} over the declared "
                         f"categorical columns ({list(cfg.categorical)}); is it a cohort client of the same version?")
    return s


def _statistics(r: Reply, cfg, kinds: dict) -> tuple[F.ClientStats, int, int]:
    g = r.arrays[GROUP]
    a = {k: g.get(k) for k in ("count", "mean", "m2", "low", "high")}
    if not all(isinstance(v, np.ndarray) and v.dtype == np.float64 and v.ndim == 1 for v in a.values()):
        raise ValueError("count, mean, m2, low and high must be float64 vectors")
    train, held = row_counts(r.metrics)
    n = len(a["count"])
    if any(len(v) != n for v in a.values()) or not all(np.isfinite(v).all() for v in a.values()):
        raise ValueError("its column statistics are not finite vectors of one length")
    count, mean, m2, low, high = (a[k] for k in ("count", "mean", "m2", "low", "high"))
    seen = count > 0
    slack = 1e-9 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    # what a site's own rows can give: counts up to its training rows, the mean between the min and
    # the max, M2 at most count·(max − min)², nothing where it saw nothing, values a float32 input holds
    if ((count < 0).any() or (count > train).any() or (count != np.round(count)).any()
            or (np.abs(np.stack([mean, low, high])) > FLOAT32_MAX).any() or (low[seen] > high[seen]).any()
            or (mean[seen] < low[seen] - slack[seen]).any() or (mean[seen] > high[seen] + slack[seen]).any()
            or (m2 < 0).any() or (m2 > count * (high - low) ** 2 * (1 + 1e-9) + slack).any()
            or (mean[~seen] != 0).any() or (m2[~seen] != 0).any()):
        raise ValueError("its column statistics do not fit any rows: counts from 0 to its training rows, each mean "
                         "between its min and max, 0 <= M2 <= count·(max − min)², zeros where a column has no value")
    cats = check_categories(from_json_bytes(g.get("categories"), "the category counts"), cfg)
    F.check_declared(cats, kinds)  # numbers written one way, as the site declared in its schema
    if any(sum(c.values()) > train for c in cats.values()):
        raise ValueError("its category counts exceed its training rows")
    return (F.ClientStats(count, mean, m2, np.where(seen, low, np.inf), np.where(seen, high, -np.inf), cats),
            train, held)


def _histogram(r: Reply, count: np.ndarray) -> np.ndarray:
    h = r.arrays[GROUP].get("hist")
    p = len(count)
    if not (isinstance(h, np.ndarray) and h.dtype == np.int64 and h.shape == (p, F.BINS) and (h >= 0).all()
            and (h.sum(axis=1) == count).all()):
        raise ValueError(f"its histogram is not int64 counts of shape ({p}, {F.BINS}) that add up to its column counts")
    return h


# ----------------------------------------------------------------------------------------- site side

def reorder(table: Table, columns: list[str]) -> Table:
    """``table`` with its columns in the agreed order (a site's file may list them differently)."""
    if sorted(table.columns) != sorted(columns):
        raise DataError(f"{table.source} has columns {table.columns}; the federation agreed {columns}")
    idx = [table.columns.index(c) for c in columns]
    return Table(table.source, list(columns), [[row[j] for j in idx] for row in table.rows], table.lines)


def distinct_targets(table: Table, cfg) -> list[str]:
    """The target values a site declares in the schema (none when the config maps the target)."""
    if cfg.csv_task == "regression" or cfg.target_binarize or cfg.target_classes:
        return []
    from cohort.data.table import ALWAYS_MISSING

    missing = {*ALWAYS_MISSING, *cfg.missing_values, *cfg.missing_by_column.get(cfg.csv_target, ())}
    return sorted({v.strip() for v in table.column(cfg.csv_target)} - missing)


def histogram_reply(numeric: np.ndarray, config) -> Reply:
    try:
        site = record(config, SITE)
        low, high = (np.asarray(site[k], np.float64) for k in ("low", "high"))
    except (KeyError, TypeError, ValueError, ConfigError):
        raise DataError("data_histogram came without the federation's range (the site record's low and high)") from None
    if low.shape != (numeric.shape[1],) or high.shape != low.shape:
        raise DataError(f"data_histogram's range has {low.size} columns; this site has {numeric.shape[1]}")
    return Reply({GROUP: {"hist": F.histogram(numeric, low, high)}}, len(numeric))


def statistics_reply(stats: F.ClientStats, train: int, held: int) -> Reply:
    seen = stats.count > 0
    arrays = {"count": stats.count, "mean": stats.mean, "m2": stats.m2,
              "low": np.where(seen, stats.low, 0.0), "high": np.where(seen, stats.high, 0.0),
              "categories": to_json_bytes(stats.categories)}
    return Reply({GROUP: {k: np.asarray(v, np.float64) if k != "categories" else v for k, v in arrays.items()}}, train,
                 {"rows_train": float(train), "rows_held": float(held)})


def remote_data(agreement: Agreement, cfg):
    """The server's view of a site federation (:class:`cohort.data.from_config.FederatedData`): the
    shape of a prepared row and each site's size, and no row at all."""
    from cohort.data import ArrayDataset
    from cohort.data.from_config import FederatedData

    n = agreement.num_clients
    train = np.array([agreement.train_sizes.get(c, 0) for c in range(n)], np.int64)
    held = np.array([agreement.held_sizes.get(c, 0) for c in range(n)], np.int64)
    y = np.zeros(1, np.float32 if cfg.csv_task == "regression" else np.int64)  # one made-up row: what a model is checked with
    shape = ArrayDataset(np.zeros((1, agreement.width), np.float32), y, cfg.csv_task, agreement.num_classes, name="sites")
    names = [agreement.names.get(c, f"client {c}") for c in range(n)]
    return FederatedData(shape, None, SiteSizes(train), SiteSizes(held) if cfg.holds_out else None, names)


class SiteSizes:
    """A partition the server only knows the sizes of: the rows stay with the sites."""

    def __init__(self, sizes: np.ndarray) -> None:
        self._sizes = np.asarray(sizes, np.int64)

    def __len__(self) -> int:
        return len(self._sizes)

    def sizes(self) -> np.ndarray:
        return self._sizes.copy()

    def __getitem__(self, client: int):
        raise DataError(f"client {client}'s rows are held by its site; this server has only their count")
