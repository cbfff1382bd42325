"""Attack simulators: a share of the clients turned malicious, to measure what robust aggregation
withstands.

- ``sign_flip``: the update is negated (the client pushes the model back the way it came);
- ``scale``: the update is multiplied by ``scale`` (×10, ×100: a boosted model-replacement attempt);
- ``noise``: the update is replaced by Gaussian noise of standard deviation ``noise_std``;
- ``label_flip``: the client trains on labels ``c → C − 1 − c`` (data poisoning; see
  :func:`flip_labels`, applied to its examples when the data is built).

The attackers are a seeded choice of ``round(fraction · N)`` client ids (:func:`choose_attackers`),
the same in every backend. An attacker's trainer wraps the honest one, so the attack works with any
framework and any algorithm's client half.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cohort.client.base import ClientFn, Trained, as_trainer
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError
from cohort.core.seeding import Stage, rng

ATTACKS = ("none", "sign_flip", "scale", "noise", "label_flip")


def choose_attackers(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 1):
        raise ConfigError(f"attack.fraction is {fraction!r}; expected 0 <= fraction < 1")
    count = round(fraction * num_clients)
    return frozenset(int(c) for c in rng(seed, 0, Stage.ATTACK).choice(num_clients, count, replace=False))


def poison(delta: NamedArrays, kind: str, scale: float, noise_std: float, g: np.random.Generator) -> NamedArrays:
    if kind == "sign_flip":
        return {k: -a for k, a in delta.items()}
    if kind == "scale":
        return {k: (a * np.asarray(scale, a.dtype)) if a.dtype.kind == "f" else a for k, a in delta.items()}
    if kind == "noise":
        return {k: g.normal(0.0, noise_std, a.shape).astype(a.dtype) if a.dtype.kind == "f" else a for k, a in delta.items()}
    return delta


class _Poisoned:
    """An attacker's trainer: the honest one's work, with its update poisoned."""

    def __init__(self, inner, cid: int, attack: "Attack") -> None:
        self.inner, self.cid, self.attack = inner, cid, attack

    def _poison(self, t: Trained, config) -> Trained:
        g = rng(self.attack.seed, int(config.get("round", 0)), Stage.ATTACK, self.cid)
        return replace(t, delta=poison(t.delta, self.attack.kind, self.attack.scale, self.attack.noise_std, g))

    def train(self, arrays, config, hooks):
        return self._poison(self.inner.train(arrays, config, hooks), config)

    def gradient(self, arrays, config):
        return self._poison(self.inner.gradient(arrays, config), config)

    def evaluate(self, arrays, config):
        return self.inner.evaluate(arrays, config)


@dataclass(frozen=True)
class Attack:
    """``client_fn`` whose ``attackers`` poison their updates (picklable, for the process pool)."""

    client_fn: ClientFn
    attackers: frozenset[int]
    kind: str
    scale: float = 10.0
    noise_std: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"attack.kind is {self.kind!r}; expected one of {', '.join(ATTACKS)}")
        if not (isinstance(self.scale, (int, float)) and np.isfinite(self.scale)):
            raise ConfigError(f"attack.scale is {self.scale!r}; expected a finite number")
        if not (isinstance(self.noise_std, (int, float)) and 0 < self.noise_std < np.inf):
            raise ConfigError(f"attack.noise_std is {self.noise_std!r}; expected a finite number > 0")

    def __call__(self, cid: int):
        client = self.client_fn(cid)
        if cid not in self.attackers or self.kind in ("none", "label_flip"):
            return client
        return _Poisoned(as_trainer(client), cid, self)


def flip_labels(y: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """A copy of ``y`` with ``c → num_classes − 1 − c`` at ``indices``."""
    out = np.array(y, copy=True)
    out[indices] = num_classes - 1 - out[indices]
    return out
