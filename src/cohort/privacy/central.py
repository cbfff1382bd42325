"""Central differential privacy: DP-FedAvg (McMahan et al. 2018), with adaptive clipping (Andrew et
al. 2021).

The server is trusted to see each update; what it releases (the new global model) is differentially
private with respect to any one client's whole data. Each round:

1. every accepted update is clipped to L2 norm ``C`` over all its arrays and weighs 1;
2. Gaussian noise of standard deviation ``z·C`` is added to the *sum*, from the run's seeded stream;
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
from dataclasses import replace
from typing import NamedTuple


from cohort.aggregation.pipeline import Aggregate, Mechanism
from cohort.core.arrays import NamedArrays, clip_to
from cohort.core.errors import ConfigError
from cohort.core.seeding import Stage, rng
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


def ledger_of(state: DpState) -> acct.Ledger:
    return tuple((float(q), float(z), int(n)) for q, z, n in json.loads(state.ledger))


def _positive(name: str, v, upper: float = math.inf) -> None:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < upper and math.isfinite(v)):
        raise ConfigError(f"privacy.{name} is {v!r}; expected a finite number > 0" + (f" and < {upper:g}" if upper < math.inf else ""))


def central_dp(noise_multiplier: float, clip: float, *, delta: float = 1e-5, epsilon_max: float | None = None,
               accountant: str = "rdp", adaptive: bool = False, target_quantile: float = 0.5, clip_lr: float = 0.2,
               count_stddev: float | None = None) -> Mechanism:
    """DP-FedAvg's clip and noise as one :class:`Mechanism`; put it on an algorithm with
    :func:`cohort.privacy.with_privacy`. ``epsilon_max``: the round that would take ε (at ``delta``)
    over it is refused and the run ends."""
    _positive("noise_multiplier", noise_multiplier)
    _positive("clip", clip)
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
        return DpState(float(clip))

    def clip_step(u: ClientUpdate, state: DpState, ctx: RoundContext):
        clipped_delta, was = clip_to(u.delta, state.clip)
        return replace(u, delta=clipped_delta, weight=1.0), state._replace(clients=state.clients + 1,
                                                                           clipped=state.clipped + int(was))

    def noise(agg: Aggregate, state: DpState, ctx: RoundContext):
        m = max(1, ctx.cohort_size)
        sigma_b, z_delta = split(m)
        std = z_delta * state.clip
        g = rng(ctx.seed, ctx.round, Stage.DP_NOISE)
        sums = {k: s + g.normal(0.0, std, s.shape) for k, s in agg.delta_sum.items()}
        new_clip = state.clip
        if adaptive:
            unclipped = state.clients - state.clipped
            b = (unclipped + rng(ctx.seed, ctx.round, Stage.DP_CLIP).normal(0.0, sigma_b)) / m
            new_clip = float(state.clip * math.exp(-clip_lr * (b - target_quantile)))
        ledger = json.dumps(acct.record(ledger_of(state), ctx.sampling_rate, z))
        clipped = state.clipped / state.clients if state.clients else 0.0
        return (replace(agg, delta_sum=sums, total_weight=float(m)),
                DpState(new_clip, ledger, 0, 0, float(state.clip), float(clipped), float(std / m)))

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
