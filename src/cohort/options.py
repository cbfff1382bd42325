"""The optional sections of a run's config, each checked where it is built: ``[privacy]``,
``[secagg]``, ``[compression]``, ``[network]`` and ``[attack]`` (``config.py`` holds the rest and
the loading; components bring their own sections, ``cohort.core.sections``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cohort.core.errors import check as _check


@dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]``: central differential privacy (DP-FedAvg) on the model's updates."""

    mode: str = "none"  # none | central
    noise_multiplier: float = 1.0  # z: noise std on the sum = z · clip
    clip: float = 1.0  # C: every update is clipped to this L2 norm (the start value when adaptive)
    adaptive_clip: bool = False  # move C towards target_quantile of the update norms (Andrew et al. 2021)
    target_quantile: float = 0.5  # γ
    clip_lr: float = 0.2  # η: C ← C · exp(−η (b̄ − γ))
    count_stddev: float = 0.0  # σ_b: noise on the count of unclipped updates; 0: cohort / 20
    delta: float = 1e-5  # δ of the (ε, δ) guarantee
    epsilon_max: float = 0.0  # stop before the round that would spend more; 0: no budget
    accountant: str = "rdp"  # rdp | pld

    def __post_init__(self) -> None:
        _check(self.mode in ("none", "central"), "privacy.mode", self.mode, "'none' or 'central'")
        if self.mode != "none":
            self.mechanism()  # checks every value, naming its key

    def mechanism(self):
        """The mechanism, its noise under a secret key of its own (``$COHORT_INSECURE_NOISE_KEY``, a
        reproducible test mode, stands in for it with a warning)."""
        from cohort.privacy import central_dp
        from cohort.privacy.central import insecure_key

        return central_dp(self.noise_multiplier, self.clip, delta=self.delta, epsilon_max=self.epsilon_max or None,
                          accountant=self.accountant, adaptive=self.adaptive_clip,
                          target_quantile=self.target_quantile, clip_lr=self.clip_lr,
                          count_stddev=self.count_stddev or None, noise_key=insecure_key())


@dataclass(frozen=True)
class SecAggConfig:
    """``[secagg]``: secure aggregation, so that the server learns only each round's sum."""

    mode: str = "none"  # none | secagg (every pair of clients) | secagg+ (a sparse graph of `degree` neighbours)
    threshold: float = 0.5  # t as a share of the cohort (secagg+: of a client's neighbourhood): must survive every stage
    clip_range: float = 1.0  # each coordinate of a model delta is clipped to [-clip_range, clip_range]
    degree: int = 10  # secagg+: neighbours per client

    def __post_init__(self) -> None:
        _check(self.mode in ("none", "secagg", "secagg+"), "secagg.mode", self.mode, "'none', 'secagg' or 'secagg+'")
        self.settings()

    def settings(self):
        from cohort.secagg.settings import SecureAggregation

        return SecureAggregation(self.threshold, self.clip_range, self.degree if self.mode == "secagg+" else 0)


@dataclass(frozen=True)
class CompressionConfig:
    """``[compression]``: how clients send their model delta up."""

    kind: str = "none"  # none | fp16 | int8 (unbiased stochastic) | topk (with error feedback)
    topk_fraction: float = 0.05  # topk: the share of entries sent

    def __post_init__(self) -> None:
        from cohort.client.compression import check

        check(self.kind, self.topk_fraction)


@dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: a cost model for simulation: each client's latency and bandwidth (seeded)."""

    latency_s: float = 0.0  # one way; 0 and bandwidth_mbps 0: no network model
    bandwidth_mbps: float = 0.0  # megabits per second; 0: unlimited
    spread: float = 1.0  # > 1: each client's latency up to spread× and bandwidth down to 1/spread×, log-uniform

    def __post_init__(self) -> None:
        from cohort.server.network import NetworkModel

        NetworkModel(0, self.latency_s, self.bandwidth_mbps, self.spread)  # checks every value, naming its key


@dataclass(frozen=True)
class AttackConfig:
    """``[attack]``: simulated malicious clients (to measure robust aggregation)."""

    kind: str = "none"  # none | sign_flip | scale | noise | label_flip
    fraction: float = 0.2  # the share of clients that attack (a seeded choice)
    scale: float = 10.0  # scale: the factor on the update
    noise_std: float = 1.0  # noise: the update is replaced by N(0, noise_std²)

    def __post_init__(self) -> None:
        from cohort.client.attacks import ATTACKS

        _check(self.kind in ATTACKS, "attack.kind", self.kind, f"one of {', '.join(ATTACKS)}")
        _check(0 <= self.fraction < 1, "attack.fraction", self.fraction, "0 <= fraction < 1")
        _check(math.isfinite(self.scale), "attack.scale", self.scale, "a finite number")
        _check(0 < self.noise_std < math.inf, "attack.noise_std", self.noise_std, "a finite number > 0")
