"""A network cost model for simulation: what a round would take in a real deployment.

Each client has a one-way latency and a bandwidth, either the same for all (``spread = 1``) or
sampled log-uniformly between ``value`` and ``value · spread`` (bandwidth: divided), seeded per
client. A task's network time is two latencies (the model down, the result up) plus the bytes each
way over the client's bandwidth. It is added to the compute time on the virtual clock, so the
asynchronous policies' arrival order feels it too. Every round's record shows it beside the compute.
For example, 10 clients, a 100 MB model, 1 ms of latency and 1 Gbit/s give 2·0.001 + 2·0.8 = 1.602 s.
"""

from __future__ import annotations

import math

from cohort.core.errors import ConfigError
from cohort.core.seeding import Stage, rng


class NetworkModel:
    def __init__(self, seed: int, latency_s: float = 0.0, bandwidth_mbps: float = 0.0, spread: float = 1.0) -> None:
        checks = (("network.latency_s", latency_s, 0 <= latency_s < 3600, "seconds from 0 to 3600"),
                  ("network.bandwidth_mbps", bandwidth_mbps, 0 <= bandwidth_mbps < math.inf,
                   "megabits per second > 0, or 0 for no bandwidth limit"),
                  ("network.spread", spread, 1 <= spread < math.inf, "a finite number >= 1"))
        for key, v, ok, expected in checks:
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and ok):
                raise ConfigError(f"{key} is {v!r}; expected {expected}")
        self.seed, self.latency_s, self.bandwidth_mbps, self.spread = seed, float(latency_s), float(bandwidth_mbps), float(spread)

    @property
    def on(self) -> bool:
        return self.latency_s > 0 or self.bandwidth_mbps > 0

    def client(self, cid: int) -> tuple[float, float]:
        """(latency in s, bandwidth in bytes per s or inf) of client ``cid``."""
        u = rng(self.seed, 0, Stage.NETWORK, cid).random(2) if self.spread > 1 else (0.0, 0.0)
        latency = self.latency_s * self.spread ** u[0]
        bandwidth = self.bandwidth_mbps * 1e6 / 8 / self.spread ** u[1] if self.bandwidth_mbps > 0 else math.inf
        return latency, bandwidth

    def transfer_s(self, cid: int, bytes_down: int, bytes_up: int) -> float:
        if not self.on:
            return 0.0
        latency, bandwidth = self.client(cid)
        return 2 * latency + (bytes_down + bytes_up) / bandwidth
