"""``cohort plot``: curves of one or more runs, overlaid, as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cohort.core.errors import ConfigError
from cohort.tracking.writers import read_jsonl


def plot_runs(runs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] = ("accuracy", "loss")) -> Path:
    """One panel per metric, one line per run (x: round). Metrics no run reported are left out."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works with no display
    import matplotlib.pyplot as plt

    histories = {}
    for run in runs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise ConfigError(f"{str(run)!r} is not a run folder: {path} is missing (give folders written by `cohort run`)")
        label = Path(run).name if Path(run).name not in histories else str(run)
        histories[label] = read_jsonl(path)
    shown = [m for m in metrics if any(r.get(m) is not None for h in histories.values() for r in h)]
    if not shown:
        raise ConfigError(f"none of the runs reported {', '.join(metrics)}; choose metrics with --metric")
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        for name, history in histories.items():
            rows = [r for r in history if r.get(metric) is not None]
            ax.plot([r["round"] for r in rows], [r[metric] for r in rows], marker=".", label=name)
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
