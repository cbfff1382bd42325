"""Per-client results of a run, read from its ``clients.jsonl``: the per-site table of the final model
(``cohort report RUN_DIR``) and per-site curves (``cohort plot RUN_DIR --per-site``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cohort.core.errors import ConfigError


def client_rows(run: str | Path) -> list[dict[str, Any]]:
    """Every row of ``run``'s clients.jsonl (a line torn by a crash is skipped)."""
    path = Path(run) / "clients.jsonl"
    if not Path(run).is_dir():
        raise ConfigError(f"{str(run)!r} is not a run folder")
    if not path.is_file():
        raise ConfigError(f"{str(run)!r} has no clients.jsonl: it was written by an older cohort, or no round finished")
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int) and isinstance(row.get("client"), int):
            rows.append(row)
    return rows


def site_table(rows: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]], list[str]]:
    """The last evaluated round, one entry per client evaluated in it (client, name, examples, loss,
    metrics, or failure), and the metric names, in order."""
    evaluated = [r for r in rows if r.get("task") == "evaluate"]
    if not evaluated:
        raise ConfigError("the run evaluated no client on its own data: set data.holdout_fraction > 0 and "
                          "evaluate.federated_fraction > 0 (natural partitions do by default)")
    last = max(r["round"] for r in evaluated)
    entries = sorted((r for r in evaluated if r["round"] == last), key=lambda r: r["client"])
    ok = [r for r in entries if r.get("status") == "ok"]
    if ok and not any("loss" in r or r.get("metrics") or "examples" in r for r in ok):
        raise ConfigError("the run's clients were evaluated under secure aggregation: the server never saw one "
                          "client's held-out figures, only their means (federated_* in metrics.jsonl)")
    metrics = sorted({k for r in entries for k in (r.get("metrics") or {})},
                     key=lambda k: (k not in ("accuracy", "r2"), k))
    return last, entries, metrics


def format_site_table(run: str | Path) -> str:
    last, entries, metrics = site_table(client_rows(run))
    header = ["client", "name", "examples", "loss", *metrics]
    lines = [header]
    ok = [e for e in entries if e.get("status") == "ok"]
    for e in entries:
        if e.get("status") != "ok":
            lines.append([str(e["client"]), str(e.get("name", e["client"])), "-", "failed: " + str(e.get("failure", ""))[:60]])
            continue
        m = e.get("metrics") or {}
        lines.append([str(e["client"]), str(e.get("name", e["client"])), str(e.get("examples", "")), _num(e.get("loss")),
                      *[_num(m.get(k)) for k in metrics]])
    if ok:
        total = sum(e.get("examples", 0) for e in ok)
        weighted = ["all (weighted)", "", str(total), _num(_mean(ok, "loss", True)),
                    *[_num(_mean(ok, k, True)) for k in metrics]]
        plain = ["all (each once)", "", "", _num(_mean(ok, "loss", False)), *[_num(_mean(ok, k, False)) for k in metrics]]
        lines += [weighted, plain]
    widths = [max(len(row[i]) for row in lines if i < len(row)) for i in range(len(header))]
    text = [f"{Path(run).name}: the final model (round {last}) on each client's held-out data"]
    for k, row in enumerate(lines):
        text.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if k == 0 or k == len(entries):
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def _mean(entries: list[dict], key: str, weighted: bool) -> float | None:
    pairs = []
    for e in entries:
        v = e.get("loss") if key == "loss" else (e.get("metrics") or {}).get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            pairs.append((v, e.get("examples", 0) if weighted else 1))
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def plot_sites(run: str | Path, out: str | Path, metric: str = "accuracy") -> Path:
    """One line per client: its held-out ``metric`` (or loss) over the rounds it was evaluated in."""
    from cohort.tracking.plot import _output_path, _save

    rows = [r for r in client_rows(run) if r.get("task") == "evaluate" and r.get("status") == "ok"]
    series: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for r in rows:
        v = r.get("loss") if metric == "loss" else (r.get("metrics") or {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            series.setdefault((r["client"], str(r.get("name", r["client"]))), []).append((r["round"], v))
    if not series:
        raise ConfigError(f"no client of {str(run)!r} reported {metric!r} on its held-out data; try --metric loss")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, fmt = _output_path(out)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (_, name), points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=1.3)
    ax.set_xlabel("round")
    ax.set_ylabel(f"{metric} (held-out, per client)")
    ax.set_title(Path(run).name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1, loc="best")
    fig.tight_layout()
    _save(fig, path, fmt)
    plt.close(fig)
    return path
