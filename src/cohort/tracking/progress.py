"""Live progress of a run on the terminal: a bar over rounds, and one line of metrics per round."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

SHOWN = (("accuracy", "acc"), ("r2", "r2"), ("loss", "loss"), ("federated_accuracy", "fed acc"),
         ("federated_r2", "fed r2"), ("federated_loss", "fed loss"), ("train_loss", "train loss"))


def format_record(record: Mapping[str, Any]) -> str:
    parts = [f"{label} {record[key]:.4f}" for key, label in SHOWN if isinstance(record.get(key), (float, np.floating))]
    if isinstance(record.get("dp_epsilon"), (int, float, np.floating)):
        parts.append(f"ε {record['dp_epsilon']:.3g} (δ {record['dp_delta']:g})")
    if record.get("status") == "initial":
        parts.append("(the initial model)")
    else:
        parts.append(f"clients {record['clients_succeeded']}/{record['clients_sampled']}")
    if record.get("status") == "skipped":
        parts.append("[skipped: too few updates]")
    parts.append(f"{record['seconds']:.2f}s")
    return "  ".join(parts)


class ConsoleProgress:
    """Call with each round's record. ``bar=False`` keeps only the per-round lines (and on a
    non-terminal rich draws no bar anyway, so logs stay clean)."""

    def __init__(self, rounds: int, *, console: Console | None = None, bar: bool = True, lines: bool = True) -> None:
        self.console = console or Console()
        self.rounds, self.lines = rounds, lines
        self._progress = None
        if bar:
            self._progress = Progress(
                TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}", markup=False), console=self.console, transient=True,
            )
            self._task = self._progress.add_task("rounds", total=rounds, metrics="")
            self._progress.start()

    def __call__(self, record: Mapping[str, Any], state: Any = None) -> None:
        text = format_record(record)
        if self.lines:
            self.console.print(f"round {record['round']:>{len(str(self.rounds))}}/{self.rounds}  {text}", highlight=False, markup=False, soft_wrap=True)
        if self._progress is not None:
            self._progress.update(self._task, completed=record["round"], metrics=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
