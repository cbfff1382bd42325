"""The folder a run writes: resolved config, metrics (JSONL, CSV), final model, summary."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cohort.core.arrays import NamedArrays, save_safetensors
from cohort.core.errors import ConfigError
from cohort.tracking.writers import CsvWriter, JsonlWriter, MetricsWriter


class RunFolder:
    """``<root>/<name>-<timestamp>/``: a new folder each run, never overwriting an earlier one."""

    def __init__(self, root: str | Path, name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"{name}-{stamp}"
        path, n = base, 1
        while True:
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot create the run folder {str(path)!r} (output.dir = {str(root)!r}, "
                                  f"name = {name!r}): {e}; choose a writable folder") from e
        self.path = path
        self.writers: list[MetricsWriter] = [JsonlWriter(path / "metrics.jsonl")]
        try:
            self.writers.append(CsvWriter(path / "metrics.csv"))
        except BaseException:
            self.close()
            raise

    def write_config(self, toml_text: str) -> None:
        self.write_text("config.toml", toml_text)

    def write_text(self, name: str, text: str) -> None:
        _write_atomic(self.path / name, text)

    def write_round(self, record: Mapping[str, Any], state: Any = None) -> None:
        for writer in self.writers:
            writer.write(record)

    def save_model(self, arrays: NamedArrays, metadata: Mapping[str, str] | None = None) -> None:
        """The model as safetensors (any framework) and as a torch state_dict (``torch.load``)."""
        save_safetensors(arrays, self.path / "model.safetensors", dict(metadata or {}))
        import torch

        from cohort.core.arrays import to_torch

        tmp = self.path / "model.pt.tmp"
        torch.save({k: v.clone() for k, v in to_torch(arrays).items()}, tmp)
        os.replace(tmp, self.path / "model.pt")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _write_atomic(self.path / "summary.json", json.dumps(dict(summary), indent=2) + "\n")

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
