"""``[client]``: local training settings, the same for every framework adapter (no framework here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from numbers import Integral, Real

from cohort.core.errors import ConfigError
from cohort.core.limits import MAX_CLIP, MAX_LR, MAX_NOISE_MULTIPLIER
from cohort.core.types import Config

OPTIMIZERS = ("sgd", "adam")
MAX_EPOCHS = 10_000
MAX_BATCH = 2**31


@dataclass(frozen=True)
class TrainSettings:
    """Local training of one client in one round."""

    epochs: int = 1  # E: passes over the client's examples
    batch_size: int = 10  # B: examples per step; 0 means the whole client dataset (B = ∞)
    optimizer: str = "sgd"  # "sgd" or "adam"; a fresh optimizer every round
    lr: float = 0.01  # local learning rate
    momentum: float = 0.0  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty, both optimizers
    dp_sgd: bool = False  # record-level DP-SGD through Opacus (per-example clipping, noise, Poisson batches)
    dp_noise_multiplier: float = 1.0  # σ: noise std on the summed per-example gradients = σ · dp_max_grad_norm
    dp_max_grad_norm: float = 1.0  # every example's gradient is clipped to this L2 norm
    dp_delta: float = 1e-5  # δ of the (ε, δ) each client reports
    ldp: bool = False  # local DP: clip the update to ldp_clip and add N(0, (ldp_noise_multiplier · ldp_clip)²) here
    ldp_clip: float = 1.0  # ldp: the L2 norm each update is clipped to
    ldp_noise_multiplier: float = 1.0  # ldp: noise std on each coordinate = ldp_noise_multiplier · ldp_clip
    ldp_delta: float = 1e-5  # ldp: δ of the (ε, δ) each client reports

    def __post_init__(self) -> None:
        if not (_is_int(self.epochs) and 1 <= self.epochs <= MAX_EPOCHS):
            raise ConfigError(f"client.epochs is {self.epochs!r}; expected an integer from 1 to {MAX_EPOCHS}")
        if not (_is_int(self.batch_size) and 0 <= self.batch_size <= MAX_BATCH):
            raise ConfigError(f"client.batch_size is {self.batch_size!r}; expected an integer >= 1, or 0 for the whole dataset")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"client.optimizer is {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if not (_is_real(self.lr) and 0 < self.lr <= MAX_LR):
            raise ConfigError(f"client.lr is {self.lr!r}; expected a number in (0, {MAX_LR:g}] (larger rates overflow)")
        if not (_is_real(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"client.momentum is {self.momentum!r}; expected 0 <= momentum < 1")
        if not (_is_real(self.weight_decay) and 0 <= self.weight_decay < math.inf):
            raise ConfigError(f"client.weight_decay is {self.weight_decay!r}; expected a finite number >= 0")
        for name in ("dp_sgd", "ldp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"client.{name} is {getattr(self, name)!r}; expected true or false")
        for name, top in (("dp_noise_multiplier", MAX_NOISE_MULTIPLIER), ("dp_max_grad_norm", MAX_CLIP),
                          ("ldp_clip", MAX_CLIP), ("ldp_noise_multiplier", MAX_NOISE_MULTIPLIER)):
            v = getattr(self, name)
            if not (_is_real(v) and 0 < v <= top):
                raise ConfigError(f"client.{name} is {v!r}; expected a number in (0, {top:g}]")
        for name in ("dp_delta", "ldp_delta"):
            if not (_is_real(getattr(self, name)) and 0 < getattr(self, name) < 1):
                raise ConfigError(f"client.{name} is {getattr(self, name)!r}; expected 0 < δ < 1, e.g. 1e-5")

    def override(self, config: Config) -> "TrainSettings":
        """These settings with any of their fields that the round's config sets (e.g. a decayed ``lr``).
        The record-level DP settings are the client's own: a server's config cannot change them."""
        changes = {f.name: config[f.name] for f in fields(self)
                   if f.name in config and not f.name.startswith(("dp_", "ldp"))}
        return replace(self, **changes) if changes else self


def _is_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)
