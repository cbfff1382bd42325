"""What the live view shows, read from a run folder as the run writes it.

The run folder is the one source: ``config.toml``, ``metrics.jsonl`` (a record per round),
``clients.jsonl`` (a row per client per round and task), ``summary.json`` (once the run stopped) and
``.lock`` (held while a process writes the folder). So the view of a run in this process, of one
running in another process and of a finished one are the same code. Files are read incrementally
(from the last offset; a line still being written is left for the next read), so a long run costs
the view only its new lines.

Nothing here holds a client's update or a row of data: the records carry metrics, counts, seconds and
bytes only. Under secure aggregation a client's row says only that it took part (or why it failed):
its examples and metrics are then unknown (None), never 0, and ``protections`` shows what was on.
"""

from __future__ import annotations

import json
import os
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class _Tail:
    """The complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.inode = path, 0, None

    def read(self) -> list[dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        size = st.st_size
        if self.inode is None:
            self.inode = st.st_ino
        # replaced (a resumed run rewrites the file without the rounds after its checkpoint) or cut
        # shorter: everything is read again
        if st.st_ino != self.inode or size < self.offset:
            self.offset, self.inode = 0, st.st_ino
            raise _Restart()
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        end = chunk.rfind(b"\n") + 1  # a partial last line waits for the next read
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out


class _Restart(Exception):
    pass


@dataclass
class _Client:
    id: int
    name: str = ""
    examples: int | None = None  # None: never reported (secure aggregation keeps it from the server)
    rounds: set = field(default_factory=set)
    last_round: int = 0
    last_metrics: dict = field(default_factory=dict)
    failures: int = 0
    last_failure: str = ""
    bytes: int = 0
    connected: bool | None = None  # deployments: from the server's run log; None in a simulation
    since: float | None = None  # when it joined or left (Unix time)

    def row(self) -> dict:
        return {"id": self.id, "name": self.name or str(self.id), "examples": self.examples, "rounds": len(self.rounds),
                "last_round": self.last_round, "metrics": self.last_metrics, "failures": self.failures,
                "last_failure": self.last_failure, "bytes": self.bytes, "connected": self.connected, "since": self.since}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RunReader:
    """The state of the run in ``folder``, kept up to date by :meth:`refresh`."""

    ROUND_KEYS = ("round", "status", "clients_sampled", "clients_succeeded", "clients_failed", "seconds", "fit_seconds",
                  "aggregate_seconds", "evaluate_seconds", "bytes_sent", "bytes_received", "dp_epsilon",
                  "staleness_mean", "staleness_max", "failures")
    # what each record says about the protections that were on (shown as such, not plotted as metrics)
    PROTECTION_KEYS = ("update_bound", "secagg_mode", "secagg_threshold", "secagg_degree", "secagg_clip_range", "secagg_range_clipped",
                       "secagg_metrics_error", "norm_bound", "weight_bound", "updates_bounded", "dp_epsilon", "dp_delta",
                       "dp_clip", "dp_clipped_fraction", "dp_noise_std")

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._reset()

    def _reset(self) -> None:
        self.records: list[dict] = []
        self.clients: dict[int, _Client] = {}
        self._metrics = _Tail(self.folder / "metrics.jsonl")
        self._rows = _Tail(self.folder / "clients.jsonl")
        self._event_id = 0  # the server's run log (deployments), read from after this row
        self.config: dict = {}
        self.signature: tuple = ()

    def changed(self) -> bool:
        """Whether any file of the folder changed since the last refresh (cheap: sizes and times)."""
        return self._signature() != self.signature

    def _signature(self) -> tuple:
        out = []
        for name in ("metrics.jsonl", "clients.jsonl", "summary.json", "config.toml", "server.sqlite", "server.sqlite-wal",
                     ".lock"):
            try:
                st = (self.folder / name).stat()
                out.append((st.st_size, st.st_mtime_ns, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def refresh(self) -> None:
        self.signature = self._signature()
        if not self.config:
            try:
                self.config = tomllib.loads((self.folder / "config.toml").read_text())
            except (FileNotFoundError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                self.config = {}
        try:
            new_records, new_rows = self._metrics.read(), self._rows.read()
        except _Restart:
            self._reset()
            return self.refresh()
        for r in new_records:
            if _finite(r.get("round")):
                self.records = [x for x in self.records if x.get("round") != r["round"]] + [r]
        for row in new_rows:
            self._add_row(row)
        self._read_run_log()

    def _read_run_log(self) -> None:
        """Who joined and left a deployment (the server's ``server.sqlite``), opened read-only."""
        path = self.folder / "server.sqlite"
        if not path.exists():
            return
        import sqlite3

        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.5)
            try:
                rows = db.execute("SELECT id, time, client_id, event, detail FROM events WHERE id > ? ORDER BY id",
                                  (self._event_id,)).fetchall()
            finally:
                db.close()
        except sqlite3.Error:  # being written, or not a run log: next time
            return
        for event_id, when, cid, event, detail in rows:
            self._event_id = event_id
            if not isinstance(cid, int):
                continue
            c = self.clients.setdefault(cid, _Client(cid))
            if event == "joined":
                c.connected, c.since = True, when
                if detail and not c.name:
                    c.name = str(detail)[:200]
            elif event in ("left", "refused"):
                c.connected, c.since = False, when
                if event == "refused":
                    c.failures += 1
                    c.last_failure = f"refused: {str(detail)[:300]}"

    def _add_row(self, row: dict) -> None:
        cid = row.get("client")
        if not isinstance(cid, int):
            return
        c = self.clients.setdefault(cid, _Client(cid))
        if isinstance(row.get("name"), str):
            c.name = row["name"]
        r = row.get("round") if isinstance(row.get("round"), int) else 0
        c.last_round = max(c.last_round, r)
        if _finite(row.get("bytes")):
            c.bytes += int(row["bytes"])
        if row.get("status") == "failed":
            c.failures += 1
            c.last_failure = f"round {r}, {row.get('stage', '')}: {str(row.get('failure', ''))[:300]}"
            return
        if row.get("task") == "fit":
            c.rounds.add(r)
            if _finite(row.get("examples")):
                c.examples = int(row["examples"])
        metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else {}
        shown = {("train_" + k if row.get("task") == "fit" and not k.startswith("train_") else k): v
                 for k, v in metrics.items() if _finite(v)}
        if _finite(row.get("loss")):
            shown["loss"] = row["loss"]
        c.last_metrics = {**c.last_metrics, **shown}

    def status(self) -> dict:
        summary = None
        try:
            summary = json.loads((self.folder / "summary.json").read_text())
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            pass
        if isinstance(summary, dict):
            return {"state": "finished" if summary.get("stopped_by") in ("rounds", "target") else "stopped",
                    "stopped_by": summary.get("stopped_by"), "best": summary.get("best"), "last": summary.get("last")}
        return {"state": "running" if self._writing() else "stopped", "stopped_by": None if self._writing() else
                "the run's process ended without a summary (killed?); `cohort run --resume FOLDER` continues a "
                "simulation, `cohort server --resume FOLDER` (with the server's flags) a deployment"}

    def _writing(self) -> bool:
        """Whether the process that holds the folder's lock is alive. RunFolder writes its PID into
        ``.lock``; the view reads it and never takes the lock itself, so that it cannot make a
        ``--resume`` find the folder in use."""
        try:
            pid = int((self.folder / ".lock").read_text().strip() or 0)
        except (OSError, ValueError):
            return False
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True

    def snapshot(self) -> dict:
        """Everything the page shows, as JSON-ready values (a non-finite number becomes None)."""
        return _clean(self._snapshot())

    def _snapshot(self) -> dict:
        cfg = self.config
        rounds = cfg.get("rounds")
        evaluate = cfg.get("evaluate", {}) if isinstance(cfg.get("evaluate"), dict) else {}
        privacy = cfg.get("privacy", {}) if isinstance(cfg.get("privacy"), dict) else {}
        metric_names = sorted({k for r in self.records for k, v in r.items()
                               if _finite(v) and k not in self.ROUND_KEYS and k not in self.PROTECTION_KEYS
                               and k != "version" and k != "simulated_time"})
        series = {k: [r.get(k) if _finite(r.get(k)) else None for r in self.records] for k in metric_names}
        timing = {k: [r.get(k) if _finite(r.get(k)) else None for r in self.records]
                  for k in ("seconds", "fit_seconds", "aggregate_seconds", "evaluate_seconds")}
        last = self.records[-1] if self.records else {}
        out = {
            "name": cfg.get("name", self.folder.name), "folder": self.folder.name, "status": self.status(),
            "round": last.get("round", 0), "rounds": rounds, "config": cfg,
            "target": {"metric": evaluate.get("target_metric"), "value": evaluate.get("target")},
            "x": [r.get("round") for r in self.records], "metrics": series, "timing": timing,
            "status_by_round": [r.get("status") for r in self.records],
            "clients": [c.row() for c in sorted(self.clients.values(), key=lambda c: c.id)],
            "last_failures": [str(f)[:300] for f in (last.get("failures") or [])][:10],
        }
        if any("dp_epsilon" in r for r in self.records):
            out["privacy"] = {"epsilon": [r.get("dp_epsilon") for r in self.records], "budget": privacy.get("epsilon_max"),
                              "delta": privacy.get("delta")}
        shown = {k: last[k] for k in self.PROTECTION_KEYS if k in last}
        if shown:
            out["protections"] = shown
        if any("staleness_mean" in r for r in self.records):
            out["staleness"] = {"mean": [r.get("staleness_mean") for r in self.records],
                                "max": [r.get("staleness_max") for r in self.records]}
        return out


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
