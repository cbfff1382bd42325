"""The adaptive update bound: the server never trusts a client's arithmetic.

Every update's L2 norm is bounded by ``norm_multiplier`` times the **median norm of recent updates**,
and its weight (the example count a client claims) by ``weight_multiplier`` times the median recent
weight, before it is folded. Medians, because a minority of hostile clients cannot move them: one
client that sends a finite bias of 3e38, or claims 10^15 examples, is scaled down to what the
others look like, and the model moves no further than an ordinary update moves it. This is norm
bounding (Sun et al. 2019) with the bound taken from the updates themselves, in the spirit of
adaptive clipping (Andrew et al. 2021), but without noise: it bounds influence, it is no privacy
mechanism (central DP's clip is; with DP on, that clip is the bound).

How it stays streaming. The weighted sum folds each reply as it arrives, yet the round's median is
known only at its end. So each update is compared with a *provisional* bound ``P`` (the multiplier
times the median of the norms kept from earlier rounds): one within ``P`` (and within the provisional weight cap) is folded at once, as before; one
over it is **held** until the round ends. Then the round's bound is
``B = max(P, multiplier · median(recent norms ∪ this round's norms))``, every held update is scaled
down to ``B`` (its weight capped at ``W``, likewise) and folded, in cohort order. Each update ends up
within ``B``. Only the outliers are held in memory, except in the first round, which has no history
and so holds every update until its median is known (one round of a cohort's updates); and a rerun or a resume gives the same bits
(the recent norms are part of the checkpointed state). Median over the window, not over the round
alone: a server step of one arrival (FedAsync) or a tiny cohort still has a bound no single update
decides.

The state is plain JSON text so that its shape never changes (a resume checks the checkpoint's shape
against the configured pipeline's).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from cohort.core.arrays import NamedArrays, clip_to, norm
from cohort.core.errors import ConfigError
from cohort.core.types import ClientUpdate

WINDOW = 100  # recent accepted norms and weights the medians are taken over (a few rounds' worth)


@functools.lru_cache(maxsize=8)
def _medians(recent: str) -> tuple[float, float] | None:
    """The median norm and weight of the recent updates (JSON text): read once a round, not once an update."""
    pairs = json.loads(recent)
    if not pairs:
        return None
    norms, weights = zip(*pairs)
    return float(np.median(norms)), float(np.median(weights))


class BoundState(NamedTuple):
    """The bound's state across rounds (checkpointed). ``recent``: JSON ``[[norm, weight], ...]`` of
    the last ``WINDOW`` accepted updates, oldest first; ``last``: JSON of the last round's bounds and
    bounded updates."""

    recent: str = "[]"
    last: str = "{}"


class Seen(NamedTuple):
    """What the bound noted of one update this round."""

    client_id: int
    norm: float
    weight: float


class Bound(NamedTuple):
    """A bound on every update of a group's pipeline; built by :func:`adaptive_bound`."""

    norm_multiplier: float
    weight_multiplier: float

    def init(self, arrays: NamedArrays) -> BoundState:
        return BoundState()

    def provisional(self, state: BoundState) -> tuple[float, float]:
        """(norm, weight) within which an update is folded at once; outside it, it waits for the round's end."""
        medians = _medians(state.recent)
        if medians is None:
            return 0.0, 0.0  # no history: every update waits for the round's median
        return self.norm_multiplier * medians[0], self.weight_multiplier * medians[1]

    def measure(self, update: ClientUpdate, state: BoundState) -> tuple[Seen, bool]:
        """The update's norm and weight, and whether it must wait for the round's bound."""
        seen = Seen(update.client_id, norm(update.delta), float(update.weight))
        p_norm, p_weight = self.provisional(state)
        return seen, seen.norm > p_norm or seen.weight > p_weight

    def settle(self, state: BoundState, seen: tuple[Seen, ...]) -> tuple[float, float, BoundState]:
        """The round's bounds ``(B, W)`` from the recent updates and this round's, and the next state
        (its ``last`` filled in by :meth:`close`)."""
        recent = json.loads(state.recent)
        p_norm, p_weight = self.provisional(state)
        pool = [*recent, *([s.norm, s.weight] for s in seen)]
        if pool:
            norms, weights = zip(*pool)
            b = max(p_norm, self.norm_multiplier * float(np.median(norms)))
            w = max(p_weight, self.weight_multiplier * float(np.median(weights)))
        else:
            b, w = p_norm, p_weight
        kept = [[s.norm, s.weight] for s in seen][-WINDOW:]
        return b, w, state._replace(recent=json.dumps([*recent, *kept][-WINDOW:]))

    def apply(self, update: ClientUpdate, b: float, w: float) -> ClientUpdate:
        """``update`` with its delta scaled to norm ``b`` and its weight capped at ``w``."""
        delta, _ = clip_to(update.delta, b)
        weight = min(float(update.weight), w)
        if delta is update.delta and weight == update.weight:
            return update
        return replace(update, delta=delta, weight=weight)

    def close(self, state: BoundState, b: float, w: float, seen: tuple[Seen, ...]) -> BoundState:
        """Remember the round's bounds and which updates they scaled (for the round's record)."""
        bounded = [[s.client_id, s.norm, s.weight] for s in seen if s.norm > b or s.weight > w]
        return state._replace(last=json.dumps({"norm": b, "weight": w, "bounded": bounded}))

    def report(self, state: BoundState) -> dict:
        """``norm_bound``, ``weight_bound`` and ``updates_bounded`` of the last round, and a line per
        bounded update (``bounded``), for its record."""
        last = json.loads(state.last)
        if not last:
            return {}
        lines = []
        for cid, n, wt in last["bounded"]:
            parts = []
            if n > last["norm"]:
                parts.append(f"update norm {n:.4g} scaled down to the bound {last['norm']:.4g}")
            if wt > last["weight"]:
                parts.append(f"weight (claimed examples) {wt:.6g} capped at {last['weight']:.6g}")
            lines.append(f"client {cid}: {' and '.join(parts)} ({self.norm_multiplier:g} × the median norm, "
                         f"{self.weight_multiplier:g} × the median weight of recent updates)")
        out = {"norm_bound": last["norm"], "weight_bound": last["weight"], "updates_bounded": len(lines)}
        if lines:
            out["bounded"] = lines
        return out


def adaptive_bound(norm_multiplier: float = 4.0, weight_multiplier: float = 10.0) -> Bound:
    """Bound every update's norm by ``norm_multiplier`` × the median norm of recent updates, and its
    weight by ``weight_multiplier`` × the median weight (see the module's docstring)."""
    for key, v in (("server.norm_bound_multiplier", norm_multiplier), ("server.weight_bound_multiplier", weight_multiplier)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= 1e6 and math.isfinite(v)):
            raise ConfigError(f"{key} is {v!r}; expected a number from 1 to 1000000 (how many times the median of "
                              "recent updates an update may reach)")
    return Bound(float(norm_multiplier), float(weight_multiplier))
