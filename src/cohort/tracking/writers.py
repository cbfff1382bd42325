"""Metrics writers behind one interface: a run's round records go to each writer as they happen."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

# The columns of metrics.csv, in order; metrics.jsonl keeps every key of every record.
CSV_COLUMNS = (
    "round", "status", "accuracy", "loss", "federated_accuracy", "federated_loss", "train_loss",
    "clients_sampled", "clients_succeeded", "clients_failed", "bytes_sent", "bytes_received", "seconds",
    "r2", "federated_r2",
)


class MetricsWriter(Protocol):
    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """One JSON object per round, flushed as written so a killed run keeps what it reported."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class CsvWriter:
    """The main per-round figures as CSV, a blank where a round did not report one."""

    def __init__(self, path: str | Path, columns: tuple[str, ...] = CSV_COLUMNS) -> None:
        self.path = Path(path)
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        self._csv.writeheader()

    def write(self, record: Mapping[str, Any]) -> None:
        self._csv.writerow({k: _cell(v) for k, v in record.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _cell(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
