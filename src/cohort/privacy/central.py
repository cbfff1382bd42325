"""Central differential privacy: DP-FedAvg (McMahan et al. 2018), with adaptive clipping (Andrew et
al. 2021).

The server is trusted to see each update; what it releases (the new global model) is differentially
private with respect to any one client's whole data. Each round:

1. every accepted update is clipped to L2 norm ``C`` over all its arrays and weighs 1;
2. Gaussian noise of standard deviation ``z·C`` is added to the *sum*, from a **secret** stream: its
   key is drawn from the OS's entropy when the run starts and kept only in the mechanism's state,
   which the server writes to its own checkpoint (mode 0600) and nowhere else. The run seed is
   public (every client's config holds it), so noise drawn from it could be regenerated and
   subtracted from the released model, undoing the guarantee. A resume reads the key back, so a
   resumed run still draws the same noise;
3. the sum is divided by the expected number of clients (the cohort size), not by how many came, so
   the denominator does not depend on anyone's data;
4. the accountant records one sampled Gaussian round (rate ``q``, multiplier ``z``).

Adaptive clipping moves ``C`` towards the ``target_quantile`` of the update norms: each round the
server counts the updates that were not clipped, adds Gaussian noise of standard deviation ``σ_b``
to that count (default: cohort / 20) and sets ``C ← C·exp(−η·(b̄ − γ))``. The two releases share the
budget: the delta's noise multiplier becomes ``(z⁻² − (2σ_b)⁻²)^(−1/2)``, so that ``z`` is what the
accountant charges (Andrew et al., Theorem 1).
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from cohort.aggregation.pipeline import Aggregate, Mechanism
from cohort.core.arrays import NamedArrays, clip_to
from cohort.core.errors import ConfigError
from cohort.core.limits import MAX_CLIP, MAX_NOISE_MULTIPLIER
from cohort.core.seeding import Stage
from cohort.core.types import ClientUpdate, RoundContext
from cohort.privacy import accountant as acct


class DpState(NamedTuple):
    """Central DP's state, checkpointed: the clip of the next round, the ledger, this round's tally.
    Its shape never changes (a resume checks it against the configured algorithm's), so the ledger
    is kept as JSON text."""

    clip: float  # C for the next round (adaptive: it moves)
    ledger: str = "[]"  # JSON [[q, z, rounds], ...]: what the accountant charges
    clients: int = 0  # this round so far: updates clipped or not
    clipped: int = 0  # this round so far: updates whose norm was over C
    last_clip: float = 0.0  # the last round's clip,
    last_clipped: float = 0.0  # the share of its updates that were clipped,
    last_std: float = 0.0  # and the standard deviation of the noise on its mean
    key: str = ""  # the noise's secret key (hex, 256 bits from the OS): in the checkpoint only, never in a record


def ledger_of(state: DpState) -> acct.Ledger:
    return tuple((float(q), float(z), int(n)) for q, z, n in json.loads(state.ledger))


def _positive(name: str, v, upper: float = math.inf, most: float = math.inf) -> None:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < upper and v <= most and math.isfinite(v)):
        raise ConfigError(f"privacy.{name} is {v!r}; expected a finite number > 0" + (f" and < {upper:g}" if upper < math.inf else "")
                          + (f" and at most {most:g}" if most < math.inf else ""))


INSECURE_KEY_ENV = "COHORT_INSECURE_NOISE_KEY"  # a reproducible test mode: the noise key from this variable


def insecure_key() -> str | None:
    """The noise key of the reproducible test mode (``$COHORT_INSECURE_NOISE_KEY``, any text), or None.
    Whoever knows it can regenerate the noise: never for a real release."""
    import os

    text = os.environ.get(INSECURE_KEY_ENV)
    if not text:
        return None
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _secret_rng(key: str, round_: int, stage: Stage) -> np.random.Generator:
    """The noise stream of ``round_`` and ``stage`` under the secret ``key``; seeded, but not from the run seed."""
    return np.random.default_rng(np.random.SeedSequence(int(key, 16), spawn_key=(int(round_), int(stage))))


def central_dp(noise_multiplier: float, clip: float, *, delta: float = 1e-5, epsilon_max: float | None = None,
               accountant: str = "rdp", adaptive: bool = False, target_quantile: float = 0.5, clip_lr: float = 0.2,
               count_stddev: float | None = None, noise_key: str | None = None) -> Mechanism:
    """DP-FedAvg's clip and noise as one :class:`Mechanism`; put it on an algorithm with
    :func:`cohort.privacy.with_privacy`. ``epsilon_max``: the round that would take ε (at ``delta``)
    over it is refused and the run ends. ``noise_key`` (64 hex digits): only for reproducible tests,
    since whoever knows it can remove the noise; by default each run draws its own from the OS."""
    if noise_key is not None and not (isinstance(noise_key, str) and len(noise_key) == 64
                                      and all(c in "0123456789abcdef" for c in noise_key)):
        raise ConfigError(f"noise_key is {noise_key!r}; expected 64 lowercase hex digits (256 bits), or None for a "
                          "secret key drawn from the OS")
    _positive("noise_multiplier", noise_multiplier, most=MAX_NOISE_MULTIPLIER)
    _positive("clip", clip, most=MAX_CLIP)
    acct.check(delta, accountant)
    if epsilon_max is not None:
        _positive("epsilon_max", epsilon_max)
    _positive("target_quantile", target_quantile, 1.0)
    _positive("clip_lr", clip_lr)
    if count_stddev is not None:
        _positive("count_stddev", count_stddev)
    z = float(noise_multiplier)

    def split(cohort: int) -> tuple[float, float]:
        """(σ_b, the delta's noise multiplier) for a cohort of ``cohort`` clients."""
        if not adaptive:
            return 0.0, z
        sigma_b = count_stddev if count_stddev is not None else cohort / 20
        if 2 * sigma_b <= z:
            raise ConfigError(f"adaptive clipping with privacy.noise_multiplier = {z:g} needs the noise on the clipped "
                              f"count, σ_b = {sigma_b:g}, above z / 2 = {z / 2:g} (its default is cohort / 20, here "
                              f"{cohort} / 20): sample more clients per round, raise privacy.count_stddev, or set "
                              "privacy.adaptive_clip = false")
        return sigma_b, (z ** -2 - (2 * sigma_b) ** -2) ** -0.5

    def init(arrays: NamedArrays) -> DpState:
        return DpState(float(clip), key=noise_key if noise_key is not None else secrets.token_hex(32))

    def clip_step(u: ClientUpdate, state: DpState, ctx: RoundContext):
        clipped_delta, was = clip_to(u.delta, state.clip)
        return replace(u, delta=clipped_delta, weight=1.0), state._replace(clients=state.clients + 1,
                                                                           clipped=state.clipped + int(was))

    def noise(agg: Aggregate, state: DpState, ctx: RoundContext):
        m = max(1, ctx.cohort_size)
        sigma_b, z_delta = split(m)
        std = z_delta * state.clip
        if not state.key:
            raise ConfigError("the central DP state has no noise key (a checkpoint from an older version?); "
                              "start the run anew")
        g = _secret_rng(state.key, ctx.round, Stage.DP_NOISE)
        sums = {k: s + g.normal(0.0, std, s.shape) for k, s in agg.delta_sum.items()}
        new_clip = state.clip
        if adaptive:
            unclipped = state.clients - state.clipped
            b = (unclipped + _secret_rng(state.key, ctx.round, Stage.DP_CLIP).normal(0.0, sigma_b)) / m
            new_clip = float(state.clip * math.exp(-clip_lr * (b - target_quantile)))
        ledger = json.dumps(acct.record(ledger_of(state), ctx.sampling_rate, z))
        clipped = state.clipped / state.clients if state.clients else 0.0
        return (replace(agg, delta_sum=sums, total_weight=float(m)),
                DpState(new_clip, ledger, 0, 0, float(state.clip), float(clipped), float(std / m), state.key))

    def report(state: DpState) -> dict[str, float]:
        ledger = ledger_of(state)
        if not ledger:
            return {}
        return {"dp_epsilon": acct.epsilon(ledger, delta, accountant), "dp_delta": delta,
                "dp_clip": state.last_clip, "dp_clipped_fraction": state.last_clipped, "dp_noise_std": state.last_std}

    def refusal(state: DpState, ctx: RoundContext) -> str | None:
        split(max(1, ctx.cohort_size))  # settings that cannot work are refused before the round
        if epsilon_max is None:
            return None
        ledger = ledger_of(state)
        after = acct.epsilon(acct.record(ledger, ctx.sampling_rate, z), delta, accountant)
        if after <= epsilon_max:
            return None
        spent = acct.epsilon(ledger, delta, accountant)
        rounds = sum(n for _, _, n in ledger)
        return (f"one more round would take ε to {after:.4g} at δ = {delta:g}, over privacy.epsilon_max = "
                f"{epsilon_max:g} (spent: ε = {spent:.4g} after {rounds} round{'s' if rounds != 1 else ''})")

    return Mechanism(init, clip_step, noise, report, refusal)
