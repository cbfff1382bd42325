"""The server's records in SQLite: the client registry (public keys, revocations, last seen) and the
run log (who joined, was refused, left, reported, and how each round went).

The registry is its own file, kept across runs and edited with ``cohort keys allow/revoke`` while a
server runs: the server reads a client's row at every hello and every result, so a revocation takes
effect at that client's next message. The run log is ``server.sqlite`` in the run folder.
Both are opened per process with a lock around the connection, since gRPC calls come on many threads;
SQLite's own locking (with a busy timeout) covers another process editing the registry.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cohort.core.errors import ConfigError

_CLIENTS = """CREATE TABLE IF NOT EXISTS clients (
    client_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    public_key BLOB NOT NULL,
    added REAL NOT NULL,
    revoked REAL,
    revoked_reason TEXT,
    last_seen REAL
)"""
_EVENTS = """CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    client_id INTEGER,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
)"""


def _connect(path: Path, what: str, create: bool) -> sqlite3.Connection:
    if not create and not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist; make it with `cohort keys allow --registry {path} ...`")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_CLIENTS)
        db.execute(_EVENTS)
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{what} {str(path)!r} is not a usable SQLite file: {e}") from e
    return db


@dataclass(frozen=True)
class Entry:
    client_id: int
    name: str
    public_key: bytes
    added: float
    revoked: float | None
    revoked_reason: str | None
    last_seen: float | None


class Registry:
    """Which client ids may join, with which public key; what was revoked; when each was last seen."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        self._db = _connect(self.path, "--registry", create)
        self._lock = threading.Lock()

    def allow(self, client_id: int, public_key: bytes, name: str = "") -> None:
        """Add a client, or give it a new key (which lifts a revocation)."""
        from cohort.channel.grpc.auth import load_public

        if not (isinstance(client_id, int) and not isinstance(client_id, bool) and client_id >= 0):
            raise ConfigError(f"--id is {client_id!r}; expected an integer >= 0")
        load_public(public_key, "--public")  # checks it
        with self._lock:
            self._db.execute(
                "INSERT INTO clients (client_id, name, public_key, added) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(client_id) DO UPDATE SET name = excluded.name, public_key = excluded.public_key, "
                "added = excluded.added, revoked = NULL, revoked_reason = NULL",
                (client_id, name, public_key.strip(), time.time()))

    def revoke(self, client_id: int, reason: str = "") -> None:
        with self._lock:
            cur = self._db.execute("UPDATE clients SET revoked = ?, revoked_reason = ? WHERE client_id = ?",
                                   (time.time(), reason or "revoked by the operator", client_id))
        if cur.rowcount == 0:
            raise ConfigError(f"client {client_id} is not in the registry {str(self.path)!r} (`cohort keys list` shows who is)")

    def get(self, client_id: int) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT client_id, name, public_key, added, revoked, revoked_reason, last_seen "
                                   "FROM clients WHERE client_id = ?", (client_id,)).fetchone()
        return None if row is None else Entry(*row)

    def entries(self) -> list[Entry]:
        with self._lock:
            rows = self._db.execute("SELECT client_id, name, public_key, added, revoked, revoked_reason, last_seen "
                                    "FROM clients ORDER BY client_id").fetchall()
        return [Entry(*r) for r in rows]

    def seen(self, client_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE clients SET last_seen = ? WHERE client_id = ?", (time.time(), client_id))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RunLog:
    """The server's events, in SQLite. Events before :meth:`attach` (the run folder is made after the
    clients connect) are kept in memory and written when it is attached."""

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None
        self._early: list[tuple] = []
        self._lock = threading.Lock()

    def attach(self, path: str | Path) -> None:
        db = _connect(Path(path), "the run log", create=True)
        with self._lock:
            self._db = db
            early, self._early = self._early, []
            if early:
                db.executemany("INSERT INTO events (time, client_id, event, detail) VALUES (?, ?, ?, ?)", early)

    def event(self, event: str, client_id: int | None = None, detail: str = "") -> None:
        row = (time.time(), client_id, event, detail[:2000])
        with self._lock:
            if self._db is None:
                self._early.append(row)
                return
            try:
                self._db.execute("INSERT INTO events (time, client_id, event, detail) VALUES (?, ?, ?, ?)", row)
            except sqlite3.Error:  # a full disk must not stop the federation; the run folder's files report it
                pass

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def read_events(path: str | Path) -> list[tuple[float, int | None, str, str]]:
    db = sqlite3.connect(Path(path))
    try:
        return db.execute("SELECT time, client_id, event, detail FROM events ORDER BY id").fetchall()
    finally:
        db.close()
