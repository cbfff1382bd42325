"""LEAF's Synthetic(α, β) federated dataset, generated lazily: a client's examples are drawn from (seed,
client id) when it is sampled and never stored, so a million registered clients cost nothing until used.

Client k (Li et al. 2020's construction, as in LEAF): u_k ~ N(0, α) and B_k ~ N(0, β); its model
W_k, b_k ~ N(u_k, 1) and its feature mean v_k ~ N(B_k, 1) (per feature); x ~ N(v_k, Σ) with
Σ_jj = j^-1.2; y = argmax(W_k x + b_k). α controls how different the clients' models are, β how
different their data. Sizes follow a lognormal (a few large clients, many small ones), capped. Each
client keeps the last ``holdout`` share of its examples to be scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohort.core.errors import ConfigError
from cohort.core.seeding import Stage, rng

DIM, CLASSES = 60, 10


@dataclass(frozen=True)
class SyntheticFederation:
    num_clients: int
    alpha: float = 1.0
    beta: float = 1.0
    seed: int = 0
    holdout: float = 0.2
    max_examples: int = 500  # the lognormal's tail is cut here

    def __post_init__(self) -> None:
        if not (isinstance(self.num_clients, int) and 1 <= self.num_clients <= 100_000_000):
            raise ConfigError(f"data.num_clients is {self.num_clients!r}; expected an integer from 1 to 100000000")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1e6):
                raise ConfigError(f"data.synthetic_{name} is {v!r}; expected a number >= 0")

    def size(self, k: int) -> int:
        """Client k's example count (training and held-out)."""
        g = rng(self.seed, 0, Stage.PARTITION, k)
        return int(min(self.max_examples, 20 + np.floor(g.lognormal(3.0, 1.0))))

    def examples(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client k's (x, y): float32 (n, 60) features and int64 labels in 0..9, the same on every call."""
        if not 0 <= k < self.num_clients:
            raise IndexError(f"client {k} is not one of the {self.num_clients} synthetic clients")
        n = self.size(k)
        g = rng(self.seed, 0, Stage.INIT, k + 1)  # the client's model and data: its own stream
        u, b_mean = g.normal(0, np.sqrt(self.alpha)), g.normal(0, np.sqrt(self.beta))
        w = g.normal(u, 1.0, (DIM, CLASSES))
        bias = g.normal(u, 1.0, CLASSES)
        v = g.normal(b_mean, 1.0, DIM)
        scale = np.arange(1, DIM + 1, dtype=np.float64) ** -0.6  # Σ_jj = j^-1.2: standard deviation j^-0.6
        x = (v + g.standard_normal((n, DIM)) * scale).astype(np.float32)
        y = np.argmax(x @ w + bias, axis=1).astype(np.int64)
        return x, y

    def split(self, k: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """(training, held-out) examples of client k: the held-out ones are its last share."""
        x, y = self.examples(k)
        held = int(np.floor(self.holdout * len(x) + 0.5)) if self.holdout > 0 else 0
        held = min(held, len(x) - 1)
        cut = len(x) - held
        return (x[:cut], y[:cut]), (x[cut:], y[cut:])


class LazyPartition:
    """The partition of a lazily generated federation: its length, and sizes on request."""

    def __init__(self, federation: SyntheticFederation, held_out: bool = False) -> None:
        self.federation, self.held_out = federation, held_out

    def __len__(self) -> int:
        return self.federation.num_clients

    def sizes(self, limit: int = 100_000) -> np.ndarray:
        """Sizes of the first ``limit`` clients (a sample: the federation may be too large to list)."""
        f = self.federation
        total = np.array([f.size(k) for k in range(min(limit, f.num_clients))])
        held = np.minimum(np.floor(f.holdout * total + 0.5).astype(int), total - 1) if f.holdout > 0 else 0 * total
        return held if self.held_out else total - held
