"""The sites' statistics under secure aggregation: the server learns only their sums.

With ``secagg.mode`` on, the exchange of :mod:`cohort.data.exchange` changes after the schema. Every
statistic becomes a sum over the sites, and each sum goes through the protocol's four exchanges
(:func:`cohort.secagg.exchange.secure_sum`), as exact integers (:func:`cohort.secagg.protocol.to_limbs`):

1. ``data_categories`` (in the clear): each site's training and held-out row counts, and the values
   its categorical columns take (names, no counts), so that the sums have one agreed layout.
2. ``data_statistics`` (summed): per numeric column the count and the sum, and the count of each
   agreed category. The federation's means follow.
3. ``data_spread`` (summed): per column Σ (x − mean)², with the federation's means sent down: M2.
4. ``data_histogram`` (summed, ``impute = "median"`` only): counts in 4,096 bins over mean ± 4 standard
   deviations (values beyond go to the end bins; the median is always within one standard deviation
   of the mean, so it falls inside).

Sums of real values travel as fixed point with 20 fractional bits (about 1e-6). A site refuses a sum
that the 64-bit ring could not hold for the number of sites, naming the column. Unlike the plain
exchange (Chan's pairwise form, bit-identical to the simulation) the results agree with the pooled
statistics to rounding, about 1e-9 relative; the column minima and maxima are never learnt.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np

from cohort.core.errors import DataError
from cohort.core.records import SITE, merged, record
from cohort.core.types import Reply
from cohort.data import features as F
from cohort.data.answers import GROUP, MAX_CATEGORIES, ask, check_categories, from_json_bytes, row_counts, to_json_bytes

FRACTION_BITS = 20
SPREAD = 4.0  # the median's histogram covers mean ± SPREAD standard deviations


# --------------------------------------------------------------------------------------- server side

def secure_statistics(channel, ids: list[int], cfg, agreed: dict, timeout_s, settings, seed: int, kinds=None):
    """(the federation's ClientStats, the median or None, {client: (training rows, held-out rows)}).
    ``kinds``: client -> what its schema declared its categorical columns hold (numbers or text)."""
    from cohort.secagg.crypto import SecAggError
    from cohort.secagg.exchange import Exchange, secure_sum
    from cohort.secagg.protocol import MAX_EXACT_CLIENTS, from_limbs

    if len(ids) > MAX_EXACT_CLIENTS:
        raise DataError(f"{len(ids)} sites: secure statistics sum at most {MAX_EXACT_CLIENTS} sites exactly")
    kinds = kinds or {}
    seen = ask(channel, "data_categories", agreed, ids, timeout_s, lambda r, cid: _categories(r, cfg, kinds.get(cid, {})))
    vocab: dict[str, list[str]] = {}
    for name in cfg.categorical:
        values = F.category_order({v for c in ids for v in seen[c][0].get(name, [])})  # as the plain exchange
        if len(values) > MAX_CATEGORIES:
            raise DataError(f"categorical column {name!r} has {len(values):,} values across the sites; at most "
                            f"{MAX_CATEGORIES:,} (is it really categorical?)")
        if values:
            vocab[name] = values
    base = merged(agreed, {SITE: {"clients": len(ids), "categories": vocab}})
    ctx = SimpleNamespace(channel=channel, timeout_s=timeout_s)
    def summed(task: str, config: dict, length: int) -> np.ndarray:
        ex = Exchange(ctx, 0)
        try:
            total, survivors = secure_sum(ex, ids, settings, seed, 0, task, {}, config, 4 * length)
        except SecAggError as e:
            raise DataError(f"the sites' statistics could not be summed securely ({task}): {e}; "
                            + "; ".join(f"client {f.client_id}: {f.reason}" for f in ex.failures)) from None
        if survivors != set(ids) or ex.failures:
            raise DataError(f"the sites could not agree their data ({task}): "
                            + "; ".join(f"client {f.client_id}: {f.reason}" for f in ex.failures))
        return from_limbs(total)

    p = seen[ids[0]][2]
    if any(seen[c][2] != p for c in ids):
        raise DataError("the sites have different numbers of numeric columns")
    width = sum(len(v) for v in vocab.values())
    first = summed("data_statistics", base, 2 * p + width)
    count = first[:p].astype(np.float64)
    rows = sum(seen[c][1][0] for c in ids)
    if (count < 0).any() or (count > rows).any() or (first[2 * p:] < 0).any() or (first[2 * p:] > rows).any():
        raise DataError("the sites' summed counts are negative or exceed their rows: a site sent garbage")
    total_sum = first[p:2 * p].astype(np.float64) / 2**FRACTION_BITS
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total_sum / np.maximum(count, 1), 0.0)
    m2 = summed("data_spread", merged(base, {SITE: {"mean": mean.tolist()}}), p).astype(np.float64) / 2**FRACTION_BITS
    m2 = np.maximum(m2, 0.0)
    cats, at = {}, 2 * p
    for name, values in vocab.items():
        cats[name] = {v: int(n) for v, n in zip(values, first[at:at + len(values)])}
        at += len(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(np.where(count > 0, m2 / np.maximum(count, 1), 0.0))
    low, high = mean - SPREAD * std, mean + SPREAD * std
    total = F.ClientStats(count, mean, m2, np.where(count > 0, low, np.inf), np.where(count > 0, high, -np.inf), cats)
    median = None
    if cfg.impute == "median":
        hist = summed("data_histogram", merged(base, {SITE: {"low": low.tolist(), "high": high.tolist()}}), p * F.BINS)
        hist = hist.reshape(p, F.BINS)
        if (hist < 0).any() or (hist.sum(axis=1) != count).any():
            raise DataError("the sites' summed histograms do not add up to their column counts: a site sent garbage")
        median = F.median_from(hist, low, high)
        median = np.where(std > 0, median, mean)
    return total, median, {c: seen[c][1] for c in ids}


def _categories(r: Reply, cfg, kinds: dict):
    d = from_json_bytes(r.arrays[GROUP].get("schema"), "the category values")
    if not (isinstance(d, dict) and isinstance(d.get("numeric"), int) and 0 <= d["numeric"] <= 100_000):
        raise ValueError("its category values are not {categories: {column: [values]}, numeric}")
    cats = check_categories(d.get("categories"), cfg, "category values", counts=False)
    F.check_declared(cats, kinds)  # numbers written one way, as the site declared in its schema
    return cats, row_counts(r.metrics), d["numeric"]


# ----------------------------------------------------------------------------------------- site side

def site_answer(task: str, enc: F.Encoded, train: np.ndarray, held: np.ndarray, config) -> Reply:
    """A site's answer to one step of the secure exchange: in the clear for ``data_categories``, else an
    int64 vector ``sum`` that the secure aggregation round masks."""
    numeric = enc.numeric[train]
    if task == "data_categories":
        values = {k: sorted(set(v) - {None}) for k, v in F.rows_of(enc.categorical, train).items()}
        doc = {"categories": values, "numeric": int(numeric.shape[1])}
        return Reply({GROUP: {"schema": to_json_bytes(doc)}}, len(train),
                     {"rows_train": float(len(train)), "rows_held": float(len(held))})
    site = record(config, SITE)
    sites, vocab = site.get("clients"), site.get("categories")
    if not (isinstance(sites, int) and sites >= 1 and isinstance(vocab, dict)):
        raise DataError("the server's secure statistics request lacks the site record's clients or categories")
    observed = ~np.isnan(numeric)
    if task == "data_statistics":
        seen = {name: Counter(values) for name, values in F.rows_of(enc.categorical, train).items()}
        parts = [observed.sum(axis=0).astype(np.int64), _fixed(np.nansum(numeric, axis=0), sites, enc.numeric_names, "sum")]
        for name, values in vocab.items():
            counts = seen.get(name, Counter())
            parts.append(np.array([counts[v] for v in values], np.int64))
        vector = np.concatenate(parts)
    elif task == "data_spread":
        mean = np.asarray(site.get("mean"), np.float64)
        if mean.shape != (numeric.shape[1],) or not np.isfinite(mean).all():
            raise DataError("the server's data_spread request lacks the federation's means (the site record's mean)")
        vector = _fixed(np.where(observed, (numeric - mean) ** 2, 0.0).sum(axis=0), sites, enc.numeric_names, "spread")
    elif task == "data_histogram":
        low, high = (np.asarray(site.get(k), np.float64) for k in ("low", "high"))
        if low.shape != (numeric.shape[1],) or high.shape != low.shape:
            raise DataError("the server's data_histogram request lacks the federation's range (the site record's low and high)")
        vector = F.histogram(numeric, low, high).reshape(-1)
    else:
        raise DataError(f"task {task!r} is not part of the secure data exchange")
    return Reply({GROUP: {"sum": vector.astype(np.int64)}}, len(train))


def _fixed(values: np.ndarray, sites: int, names: list[str], what: str) -> np.ndarray:
    """``values`` in fixed point; refused, naming the column, where the sum of ``sites`` of them could wrap."""
    scaled = np.round(values * 2**FRACTION_BITS)
    limit = 2.0**62 / sites
    too_big = np.flatnonzero(~(np.abs(scaled) < limit))
    if too_big.size:
        j = int(too_big[0])
        raise DataError(f"column {names[j]!r}: this site's {what} ({values[j]:.4g}) is too large for secure "
                        f"aggregation's exact sums with {sites} sites (at most {limit / 2**FRACTION_BITS:.3g}); "
                        "rescale the column in the files")
    return scaled.astype(np.int64)
