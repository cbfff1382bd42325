"""``cohort plot``: curves of one or more runs, overlaid, as PNG (or any format matplotlib writes)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cohort.core.errors import ConfigError
from cohort.tracking.writers import iter_jsonl


def plot_runs(runs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] = ("accuracy", "loss")) -> Path:
    """One panel per metric, one line per run (x: round). Metrics no run reported are left out.

    ``out`` names the file; its extension picks the format (``.png``, ``.pdf``, ``.svg``...). With no
    extension, ``.png`` is added; an existing folder gets ``curves.png`` inside it. Returns the path
    written. Lines of ``metrics.jsonl`` that cannot be plotted (a truncated line, a record without a
    round, a value that is not a number) are skipped with a warning naming the file and line.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: works with no display
    import matplotlib.pyplot as plt

    out, fmt = _output_path(out)
    histories: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for run in runs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise ConfigError(f"{str(run)!r} is not a run folder: {path} is missing (give folders written by `cohort run`)")
        label, n = Path(run).name, 1
        while label in histories:  # two runs with one folder name: tell them apart by their full path
            n += 1
            label = str(run) if n == 2 else f"{run} ({n})"
        try:
            histories[label] = _plottable(path, metrics)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    shown = [m for m in metrics if any(m in r for h in histories.values() for _, r in h)]
    if not shown:
        raise ConfigError(f"none of the runs reported {', '.join(metrics)}; choose metrics with --metric")
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    try:
        for ax, metric in zip(axes[0], shown):
            for name, history in histories.items():
                rows = [(x, r[metric]) for x, r in history if metric in r]
                ax.plot([x for x, _ in rows], [y for _, y in rows], marker=".", label=name)
            ax.set_xlabel("round")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.tight_layout()
        _save(fig, out, fmt)
    finally:
        plt.close(fig)
    return out


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


def _plottable(path: Path, metrics: Sequence[str]) -> list[tuple[int | float, dict[str, Any]]]:
    """``(round, {metric: value})`` for each record of ``path``, keeping only numbers that can be drawn."""
    history = []
    for line, record in iter_jsonl(path):
        x = record.get("round")
        if not _is_number(x):
            what = "no 'round'" if "round" not in record else f"round {x!r}, not a number"
            warnings.warn(f"{path}, line {line}: the record has {what}; skipped", stacklevel=3)
            continue
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
