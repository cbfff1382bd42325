"""An append-only, hash-chained audit log: what a site received and sent back, what a server asked and
received, one JSON line per entry.

Every entry carries its number ``n`` (from 1), the hash of the entry before it (``prev``; the first
entry's is 64 zeros) and its own ``hash``: the SHA-256 of its canonical JSON without that field. So
:func:`verify` finds an edited entry (its hash no longer matches), a removed or inserted one (a gap in
the numbers, a ``prev`` that does not match) and two swapped ones, and names the first entry that
breaks. What a chain alone cannot show is the loss of its *last* entries; the other end's log can:
a site's log and the server's agree entry for entry on every task between them (:func:`pairs`).

Arrays are recorded by :func:`arrays_digest`, a SHA-256 over their names, dtypes, shapes and bytes in
a fixed order, computed the same way at both ends, so the digest a site records for what it sent is
the digest the server records for what it received and folded.

(Written here rather than with a library: the format is twenty lines of hashlib and JSON, and a
reader can check a log with any SHA-256 tool by following the docstring.)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cohort.core.errors import ConfigError

GENESIS = "0" * 64


def arrays_digest(arrays: Any) -> str:
    """SHA-256 of named arrays ({group: {name: array}} or {name: array}), in sorted order of names, each
    as its name, dtype, shape and C-order bytes. "" when there is no array (empty groups included)."""
    if not isinstance(arrays, Mapping) or not arrays:
        return ""
    h = hashlib.sha256()
    leaves = [0]

    def walk(prefix: str, node: Mapping) -> None:
        for name in sorted(node):
            value = node[name]
            if isinstance(value, Mapping):
                walk(f"{prefix}{name}/", value)
                continue
            a = np.ascontiguousarray(value)
            leaves[0] += 1
            h.update(f"{prefix}{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(memoryview(a).cast("B") if a.size else b"")

    walk("", arrays)
    return h.hexdigest() if leaves[0] else ""  # empty groups decode as no arrays at the other end


def entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    """Appends entries to the log at ``path`` (made if missing; an existing log is checked first, and
    continued). Appends are serialised, written whole and synced, so a crash leaves whole entries."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.n, self.prev = 0, GENESIS
        if self.path.exists():
            problems = verify(self.path)
            torn = b""
            if problems and problems[0].torn_tail:  # a crash (or a full disk) cut the last entry short
                torn = _torn_tail(self.path)
                problems = verify(self.path)
            if problems:
                raise ConfigError(f"the audit log {self.path} does not verify ({problems[0]}); it is not continued. "
                                  "Keep it as evidence and start a new one (another path)")
            for entry in read(self.path):
                self.n, self.prev = entry["n"], entry["hash"]
            if self.n and not self.path.read_bytes().endswith(b"\n"):  # whole, but its newline was not written
                with open(self.path, "ab") as f:
                    f.write(b"\n")
            if torn:  # the torn bytes are kept beside the log, and the log says so
                kept = self.path.with_name(f"{self.path.name}.torn-{self.n + 1}")
                kept.write_bytes(torn)
                self.append("torn_tail_removed", bytes=len(torn), sha256=hashlib.sha256(torn).hexdigest(),
                            kept_in=kept.name)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.touch()
            except OSError as e:
                raise ConfigError(f"cannot create the audit log {self.path}: {e.strerror or e}") from e

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Add one entry; raises OSError when it cannot be written (a full disk), with the log unchanged
        on disk but for a torn last line that :func:`verify` reports."""
        with self._lock:
            when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
            entry = {"n": self.n + 1, "time": when, "kind": kind, **fields, "prev": self.prev}
            entry["hash"] = entry_hash(entry)
            line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
            with open(self.path, "ab") as f:
                size = f.tell()
                try:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    try:  # leave no torn line behind (a truncation needs no space)
                        f.truncate(size)
                    except OSError:
                        pass
                    raise
            self.n, self.prev = entry["n"], entry["hash"]
            return entry


def _torn_tail(path: Path) -> bytes:
    """Cut off, and return, the last line (:func:`verify` found it not whole: what a crash while writing
    leaves)."""
    data = path.read_bytes()
    body, sep, _ = data.rstrip(b"\n").rpartition(b"\n")
    with open(path, "r+b") as f:
        f.truncate(len(body) + len(sep))
    return data[len(body) + len(sep):]


def read(path: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of a log, as written (not checked: :func:`verify` checks)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@dataclass(frozen=True)
class Problem:
    line: int  # the line of the file (from 1)
    text: str
    torn_tail: bool = False  # the last line, not whole: what a crash while writing leaves

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


def verify(path: str | Path) -> list[Problem]:
    """What is wrong with the log at ``path``: [] when every entry is whole, numbered in order and
    chained to the one before it. Stops at the first break (what follows cannot be trusted either)."""
    prev, expected = GENESIS, 1
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [Problem(0, f"cannot read {path}: {e}")]
    for i, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            return [Problem(i, "not a whole JSON entry (edited, or torn by a crash while it was written)",
                            torn_tail=i == len(lines))]
        if not isinstance(entry, dict) or not isinstance(entry.get("n"), int):
            return [Problem(i, "not an audit entry (no number)")]
        if entry["n"] != expected:
            what = "removed or moved" if entry["n"] > expected else "moved or repeated"
            return [Problem(i, f"entry {entry['n']} where entry {expected} belongs: an entry was {what}")]
        if entry.get("prev") != prev:
            return [Problem(i, f"entry {expected} does not follow entry {expected - 1} (its prev hash differs): "
                               "an entry before it was edited, removed or moved")]
        if entry.get("hash") != entry_hash(entry):
            return [Problem(i, f"entry {expected} was edited after it was written (its hash does not match)")]
        if line != json.dumps(entry, sort_keys=True, separators=(",", ":")):
            return [Problem(i, f"entry {expected} is not written as it was (its line is not the canonical JSON of "
                               "its fields)")]
        prev, expected = entry["hash"], expected + 1
    return []


def pairs(site: list[Mapping[str, Any]], server: list[Mapping[str, Any]], client_id: int) -> list[str]:
    """Where a site's log and the server's disagree on the tasks between them: for every task the server
    recorded for ``client_id``, the site must have recorded the same task (by the server's run id and its
    task id) with the same round, digests of what it received and sent, status, example count and
    metric names; and every task the site recorded for those runs must be in the server's. [] when they
    agree entry for entry."""
    def key(e):  # task ids restart with every server process: the server's run id tells them apart
        return (str(e.get("run", "")), e.get("task_id"))

    theirs = [e for e in server if e.get("kind") == "result" and e.get("client") == client_id]
    runs = {str(e.get("run", "")) for e in theirs}
    mine: dict = {}
    for e in site:
        if e.get("kind") == "task" and str(e.get("run", "")) in runs:  # the site's tasks of this server's runs
            if key(e) in mine:
                return [f"task {e.get('task_id')} of run {e.get('run')!r} is in the site's log twice"]
            mine[key(e)] = e
    out = []
    for e in theirs:
        s = mine.pop(key(e), None)
        if s is None:
            out.append(f"task {e['task_id']} ({e['task']}): in the server's log, not in the site's")
            continue
        for k in ("task", "round", "sent_digest", "result_digest", "status", "num_examples", "metrics"):
            if s.get(k) != e.get(k):
                out.append(f"task {e['task_id']} ({e['task']}): {k} differs: site {s.get(k)!r}, server {e.get(k)!r}")
    out += [f"task {t[1]} ({s['task']}): in the site's log, not in the server's" for t, s in sorted(mine.items())]
    return out


def audit_fields(task_id: int, task: str, round_: Any, sent_digest: str, outcome: Any) -> dict[str, Any]:
    """The fields both ends record for one task: its id, name and round, the digest of the arrays it
    carried, and what came back: ``status`` ("ok", the failure's stage such as "refused", or "expired"
    when nothing came in time), the digest of the result's arrays, its example count and its metrics'
    names (never their values), or the failure's reason."""
    fields: dict[str, Any] = {"task_id": int(task_id), "task": task, "round": round_, "sent_digest": sent_digest}
    if outcome is None:
        return {**fields, "status": "expired", "result_digest": ""}
    stage = getattr(outcome, "stage", None)
    if stage is not None:  # a ClientFailure
        return {**fields, "status": getattr(stage, "value", str(stage)), "result_digest": "",
                "reason": str(getattr(outcome, "reason", ""))[:500]}
    metrics = getattr(outcome, "metrics", None)
    names = sorted(str(k) for k in metrics) if isinstance(metrics, Mapping) else []
    if hasattr(outcome, "loss"):  # an EvaluateResult: its loss is a metric too
        names = sorted({*names, "loss"})
    return {**fields, "status": "ok", "result_digest": arrays_digest(getattr(outcome, "arrays", None)),
            "num_examples": getattr(outcome, "num_examples", None), "metrics": names}
