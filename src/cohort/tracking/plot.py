"""``cohort plot``: curves of one or more runs, overlaid, as PNG (or any format matplotlib writes)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cohort.core.errors import ConfigError
from cohort.tracking.writers import iter_jsonl

# What a run is judged by, in order of preference: the server's test set (absent with natural partitions,
# where each site keeps its own), then the clients' held-out data, then the clients' training figures.
PREFERRED = (("accuracy", "r2", "loss"), ("federated_accuracy", "federated_r2", "federated_loss"))
USUAL = [m for group in PREFERRED for m in group]
# Keys of a round's record that describe the round, not the model: drawn only when named with --metric.
ROUND_FIGURES = frozenset({
    "round", "version", "clients_sampled", "clients_succeeded", "clients_failed", "clients_not_needed", "bytes_sent",
    "bytes_received", "seconds", "simulated_time", "norm_bound", "weight_bound", "updates_bounded",
    "evaluations_failed", "staleness_mean", "staleness_max"})
MAX_FALLBACK_PANELS = 4  # a run with none of the usual metrics: at most this many of its own


def plot_runs(runs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] | None = None) -> Path:
    """One panel per metric, one line per run (x: round).

    ``metrics=None`` draws the metrics the runs have (:func:`choose_metrics`): accuracy and loss on the
    server's test set, else (natural partitions: no server test set) federated accuracy and loss, else
    the clients' training figures. Named metrics that no run reported are left out with a warning; if
    none is left, ConfigError names the metrics the runs do report.

    ``out`` names the file; its extension picks the format (``.png``, ``.pdf``, ``.svg``...). With no
    extension, ``.png`` is added; an existing folder gets ``curves.png`` inside it. Returns the path
    written. Lines of ``metrics.jsonl`` that cannot be plotted (a truncated line, a record without a
    round, a value that is not a number) are skipped with a warning naming the file and line.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: works with no display
    import matplotlib.pyplot as plt

    out, fmt = _output_path(out)
    records = _read_runs(runs)
    if metrics is None:
        shown = _choose(records)
    else:
        shown = [m for m in dict.fromkeys(metrics) if any(_has(rows, m) for _, rows in records.values())]
        if not shown:
            raise ConfigError(f"none of the runs reported {', '.join(metrics)}; {_available(records)}")
        missing = [m for m in dict.fromkeys(metrics) if m not in shown]
        if missing:
            warnings.warn(f"no run reported {', '.join(missing)}: left out of the plot", stacklevel=2)
    histories = {label: _plottable(path, rows, shown) for label, (path, rows) in records.items()}
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    try:
        for ax, metric in zip(axes[0], shown):
            for name, history in histories.items():
                points = [(x, r[metric]) for x, r in history if metric in r]
                ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=name)
            ax.set_xlabel("round")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.tight_layout()
        _save(fig, out, fmt)
    finally:
        plt.close(fig)
    return out


def choose_metrics(runs: Sequence[str | Path]) -> list[str]:
    """The metrics :func:`plot_runs` draws for ``runs`` when none is named: for each run, the first of
    (accuracy, r2, loss), (federated_accuracy, federated_r2, federated_loss), its ``train_*`` figures, or
    else up to four other numbers its records hold; the union over the runs, in that order."""
    return _choose(_read_runs(runs))


def _read_runs(runs: Sequence[str | Path]) -> dict[str, tuple[Path, list[tuple[int, int | float, dict[str, Any]]]]]:
    """``label -> (metrics.jsonl, [(line, round, record)])``: the records with a numeric round."""
    out: dict[str, tuple[Path, list]] = {}
    for run in runs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise ConfigError(f"{str(run)!r} is not a run folder: {path} is missing (give folders written by `cohort run`)")
        label, n = Path(run).name, 1
        while label in out:  # two runs with one folder name: tell them apart by their full path
            n += 1
            label = str(run) if n == 2 else f"{run} ({n})"
        try:
            out[label] = (path, _rounds(path))
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    return out


def _rounds(path: Path) -> list[tuple[int, int | float, dict[str, Any]]]:
    rows = []
    for line, record in iter_jsonl(path):
        x = record.get("round")
        if not _is_number(x):
            what = "no 'round'" if "round" not in record else f"round {x!r}, not a number"
            warnings.warn(f"{path}, line {line}: the record has {what}; skipped", stacklevel=4)
            continue
        rows.append((line, x, record))
    return rows


def _has(rows: Sequence[tuple[int, Any, Mapping[str, Any]]], metric: str) -> bool:
    return any(_is_number(r.get(metric)) for _, _, r in rows)


def _numbers(rows: Sequence[tuple[int, Any, Mapping[str, Any]]]) -> list[str]:
    """The keys that hold a number in some record, in order of first appearance (``round`` aside)."""
    keys = dict.fromkeys(k for _, _, r in rows for k, v in r.items() if k != "round" and _is_number(v))
    return list(keys)


def _is_round_figure(key: str) -> bool:
    return key in ROUND_FIGURES or key.endswith(("_seconds", "_s")) or key.startswith("secagg_")


def _choose(records: Mapping[str, tuple[Path, Sequence]]) -> list[str]:
    chosen: list[str] = []
    for _, rows in records.values():
        numbers = _numbers(rows)
        train = sorted((k for k in numbers if k.startswith("train_")), key=lambda k: k != "train_loss")
        others = [k for k in numbers if _rank(k) == len(USUAL) + 1 and not _is_round_figure(k)]
        for group in (*PREFERRED, train, others[:MAX_FALLBACK_PANELS]):
            present = [m for m in group if m in numbers]
            if present:
                chosen += [m for m in present if m not in chosen]
                break
    if not chosen:
        names = ", ".join(str(path) for path, _ in records.values())
        raise ConfigError(f"none of the runs reported a metric to plot ({names}): {_available(records)}")
    return sorted(chosen, key=_rank)  # stable: within a rank, the order the runs gave


def _rank(key: str) -> int:
    """Panels' order: the usual metrics as PREFERRED lists them, then the clients' train_*, then the rest."""
    return USUAL.index(key) if key in USUAL else len(USUAL) + (not key.startswith("train_"))


def _available(records: Mapping[str, tuple[Path, Sequence]]) -> str:
    """What the runs do report, for a message: the model's metrics first, then the rounds' own figures."""
    keys = list(dict.fromkeys(k for _, rows in records.values() for k in _numbers(rows)))
    if not keys:
        return "no record with a round holds a number (has a round finished yet?)"
    metrics = sorted((k for k in keys if not _is_round_figure(k)), key=_rank)
    figures = [k for k in keys if _is_round_figure(k)]
    said = f"they report {', '.join(metrics)}" if metrics else "they report no model metric"
    if figures:
        said += f" (and the rounds' own figures: {', '.join(figures)})"
    return said + "; choose metrics with --metric"


def _output_path(out: str | Path) -> tuple[Path, str]:
    """The file to write and its format; ConfigError for an extension matplotlib cannot write."""
    out = Path(out)
    if out.is_dir():
        out = out / "curves.png"
    elif not out.suffix:
        out = out.with_name(out.name + ".png")  # what savefig would do; said here so the caller knows the name
    fmt = out.suffix[1:].lower()
    # matplotlib knows which formats its backends can write: ask the canvas of a bare (not pyplot) figure.
    from matplotlib.figure import Figure

    supported = sorted(Figure().canvas.get_supported_filetypes())
    if fmt not in supported:
        raise ConfigError(f"cannot plot to {str(out)!r}: unknown extension {out.suffix!r}; "
                          f"supported: {', '.join('.' + s for s in supported)}")
    return out, fmt


def _save(fig: Any, out: Path, fmt: str) -> None:
    """Write the figure to a temporary file beside ``out``, then rename: a failed write leaves no half file."""
    tmp = out.with_name(f".{out.name}.tmp")
    blocker = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"cannot write the plot to {str(out)!r}: {str(blocker)!r} exists and is not a folder; "
                          f"choose a writable file with -o")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, format=fmt, dpi=110)
        os.replace(tmp, out)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = e.strerror or str(e)
        where = f" ({e.filename})" if e.filename and str(e.filename) not in (str(out), str(tmp)) else ""
        raise ConfigError(f"cannot write the plot to {str(out)!r}: {reason}{where}; choose a writable file with -o") from e


def _plottable(path: Path, rows: Sequence[tuple[int, int | float, Mapping[str, Any]]],
               metrics: Sequence[str]) -> list[tuple[int | float, dict[str, Any]]]:
    """``(round, {metric: value})`` for each record of ``path``, keeping only numbers that can be drawn."""
    history = []
    for line, x, record in rows:
        values = {}
        for metric in metrics:
            v = record.get(metric)
            if v is None:  # a round that did not report this metric
                continue
            if not _is_number(v):
                warnings.warn(f"{path}, line {line}: {metric} = {v!r} is not a finite number; "
                              f"left out of the plot", stacklevel=3)
                continue
            values[metric] = v
        history.append((x, values))
    return history


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
