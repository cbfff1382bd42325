"""Connections that have not yet said who they are: their own small quota and a short deadline.

A ``Join`` stream holds one server thread from the moment it opens, and opening one needs nothing but
the server's public CA certificate. So the streams of clients that finished their hello (and, with a
registry, proved their key) have room of their own (one thread each, ``data.num_clients`` of them),
and the connections still in their hello share ``quota`` threads beside it:

- when a new connection arrives and the quota is full, the oldest one still waiting for its hello is
  closed (a real client sends its hello with the stream and proves its key within milliseconds; a
  squatter never does), else the oldest one waiting to prove its key;
- a connection not through its hello within ``hello_s`` seconds is closed by the server's watcher.

So squatters can never hold more than ``quota`` threads, and a registered client always finds one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from cohort.core.errors import ConfigError

QUOTA = 16  # connections in their hello at once
HELLO_S = 5.0  # seconds from a stream's opening to its finished hello (with a registry: its proof)

HELLO, PROOF = "hello", "proof"  # what a pending connection is waiting for


class Admission:
    """The connections in their hello: ``arrive`` when one opens, ``proving`` once it said hello and
    must sign a challenge, ``leave`` when it is through (or gone). Thread-safe."""

    def __init__(self, quota: int = QUOTA, hello_s: float = HELLO_S) -> None:
        if not (isinstance(quota, int) and not isinstance(quota, bool) and 1 <= quota <= 4096):
            raise ConfigError(f"the pre-authentication quota is {quota!r}; expected an integer from 1 to 4096")
        self.quota, self.hello_s = quota, float(hello_s)
        self._pending: OrderedDict[int, list[Any]] = OrderedDict()  # key -> [context, opened at, phase]
        self._lock = threading.Lock()
        self.evicted = 0  # connections closed to make room, for the run log and tests

    def arrive(self, key: int, context) -> list:
        """A connection opened; returns the contexts to close to keep within the quota (cancel them)."""
        with self._lock:
            self._pending[key] = [context, time.monotonic(), HELLO]
            out = []
            while len(self._pending) > self.quota:
                victim = next((k for k, (_, _, phase) in self._pending.items() if phase == HELLO and k != key), None)
                if victim is None:
                    victim = next(k for k in self._pending if k != key)
                out.append(self._pending.pop(victim)[0])
            self.evicted += len(out)
            return out

    def proving(self, key: int) -> None:
        with self._lock:
            if key in self._pending:
                self._pending[key][2] = PROOF

    def leave(self, key: int) -> None:
        with self._lock:
            self._pending.pop(key, None)

    def expired(self) -> list:
        """The contexts of connections past their hello deadline (they are forgotten here; cancel them)."""
        now = time.monotonic()
        with self._lock:
            late = [k for k, (_, opened, _) in self._pending.items() if now - opened > self.hello_s]
            return [self._pending.pop(k)[0] for k in late]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
