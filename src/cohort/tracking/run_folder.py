"""The folder a run writes: resolved config, metrics (JSONL, CSV), final model, summary."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cohort.core.arrays import NamedArrays, save_safetensors
from cohort.core.errors import CohortError, ConfigError
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
        self._open(path)

    def _lock(self, path: Path) -> None:
        """Hold ``path/.lock`` for as long as this process writes the folder: a second process (a
        --resume of a run still going) is refused instead of interleaving its writes."""
        import fcntl

        self._lock_file = open(path / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_file.close()
            self._lock_file = None
            raise ConfigError(f"the run folder {str(path)!r} is in use by another cohort process; wait for it "
                              "to finish (or stop it) before resuming") from e
        try:  # who holds it: the live view tells a running run from a killed one without touching the lock
            self._lock_file.seek(0)
            self._lock_file.truncate()
            self._lock_file.write(str(os.getpid()))
            self._lock_file.flush()
        except OSError:
            pass

    def _open(self, path: Path) -> None:
        self._lock(path)
        self.path = path
        self.writers: list[MetricsWriter] = [JsonlWriter(path / "metrics.jsonl")]
        try:
            self.writers.append(CsvWriter(path / "metrics.csv"))
        except BaseException:
            self.close()
            raise

    @classmethod
    def reopen(cls, path: str | Path) -> "RunFolder":
        """The folder of an earlier run, to go on writing in it (``cohort run --resume``)."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise ConfigError(f"{str(path)!r} is not a run folder (it has no config.toml); give a folder "
                              "written by `cohort run`")
        folder = cls.__new__(cls)
        folder.path, folder.writers, folder._lock_file = path, [], None
        folder._lock(path)
        return folder

    def rewrite_metrics(self, history) -> None:
        """Make metrics.jsonl and metrics.csv hold exactly ``history`` (each replaced atomically), then
        go on appending: rounds reported after the last checkpoint are dropped, to be run again."""
        self.close()
        for name, make in (("metrics.jsonl", JsonlWriter), ("metrics.csv", CsvWriter)):
            tmp = self.path / f"{name}.tmp"
            tmp.unlink(missing_ok=True)
            writer = make(tmp)
            try:
                for record in history:
                    writer.write(record)
            finally:
                writer.close()
            os.replace(tmp, self.path / name)
        self.writers = [JsonlWriter(self.path / "metrics.jsonl"), CsvWriter(self.path / "metrics.csv", append=True)]
        last = history[-1]["round"] if history else 0
        clients = self.path / "clients.jsonl"
        if clients.exists():  # the same for the per-client rows: those of rounds after the checkpoint go
            kept = []
            for line in clients.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    if json.loads(line).get("round", 0) <= last:
                        kept.append(line + "\n")
                except (ValueError, AttributeError):
                    continue  # a line torn by a crash
            _write_atomic(clients, "".join(kept))

    def write_config(self, toml_text: str) -> None:
        self.write_text("config.toml", toml_text)

    def write_text(self, name: str, text: str) -> None:
        _write_atomic(self.path / name, text)

    def write_round(self, record: Mapping[str, Any], state: Any = None) -> None:
        """The round's figures to metrics.jsonl/.csv, and its per-client rows (``record["clients"]``) to
        clients.jsonl, each named by ``client_names`` when the run has them."""
        rows = record.get("clients")
        if rows is not None:
            record = {k: v for k, v in record.items() if k != "clients"}
        for writer in self.writers:
            writer.write(record)
        if rows:
            if getattr(self, "clients_writer", None) is None:
                self.clients_writer = JsonlWriter(self.path / "clients.jsonl")
            names = getattr(self, "client_names", None)
            if names is not None:
                rows = [{**{k: v for k, v in row.items() if k != "name"}, "name": names[row["client"]]}
                        if 0 <= row.get("client", -1) < len(names) else row for row in rows]
            self.clients_writer.write_many(rows)

    def save_model(self, arrays: NamedArrays, metadata: Mapping[str, str] | None = None,
                   native: Callable[[NamedArrays, Path], Any] | None = None) -> None:
        """The model as safetensors (any framework) and, with ``native``, in its framework's own
        format too (the torch adapter writes ``model.pt`` for ``torch.load``)."""
        try:
            save_safetensors(arrays, self.path / "model.safetensors", dict(metadata or {}))
            if native is not None:
                native(arrays, self.path)
        except OSError as e:
            raise CohortError(f"cannot write the model in {self.path}: {e.strerror or e}; free space or choose "
                              "another output.dir (the metrics and checkpoints written so far are kept)") from e

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _write_atomic(self.path / "summary.json", json.dumps(dict(summary), indent=2) + "\n")

    def close(self) -> None:
        for writer in [*self.writers, *([self.clients_writer] if getattr(self, "clients_writer", None) else [])]:
            writer.close()
        self.writers, self.clients_writer = [], None

    def release(self) -> None:
        """Close the writers and let another process have the folder."""
        self.close()
        if getattr(self, "_lock_file", None) is not None:
            self._lock_file.close()
            self._lock_file = None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CohortError(f"cannot write {path}: {e.strerror or e}; the run folder keeps what was written before") from e
