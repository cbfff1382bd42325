"""The straggler deadline of a deployed round: once half of the cohort has answered, the rest get a
bounded time more.

A fixed round deadline must allow for the slowest honest site, so it is long (600 s by default under
`cohort server`), and a client that heartbeats but never answers would hold every round that long.
The round's own pace is a better measure: when ``quorum`` (half) of the tasks sent have come back
after ``t`` seconds, the others have ``max(min_s, factor · t)`` seconds more, and never more than the
fixed deadline. Honest stragglers that are merely slower than the median still make it (with
``factor = 2`` a site may take three times as long as the faster half); a client that never answers
costs a round ``min_s`` (10 s by default) beyond the faster half, not the whole deadline. This is the
report window of Bonawitz et al. (2019), taken from the round itself instead of set by hand.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from cohort.core.errors import ConfigError


@dataclass(frozen=True)
class StragglerRule:
    """``factor``: the stragglers' extra time, as a multiple of the time the first ``quorum`` share of
    the cohort took (0: off, only the fixed deadline); ``min_s``: at least this many seconds more."""

    factor: float = 2.0
    min_s: float = 10.0
    quorum: float = 0.5

    def __post_init__(self) -> None:
        for key, v, ok, expected in (
                ("server.straggler_factor", self.factor, 0 <= self.factor <= 1000, "0 (off) to 1000"),
                ("server.straggler_min_s", self.min_s, 0 < self.min_s <= 7 * 24 * 3600, "seconds in (0, one week]"),
                ("quorum", self.quorum, 0 < self.quorum <= 1, "a share of the cohort in (0, 1]")):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok):
                raise ConfigError(f"{key} is {v!r}; expected {expected}")


class RoundClock:
    """One round's deadline: the fixed one, brought forward by the straggler rule once the quorum answered."""

    def __init__(self, sent: int, timeout_s: float | None, rule: StragglerRule | None) -> None:
        self.started = time.monotonic()
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else self.started + timeout_s
        self.rule = rule if rule is not None and rule.factor > 0 else None
        self.sent = sent
        self.quorum = max(1, math.ceil(self.rule.quorum * sent)) if self.rule is not None else 0
        self.answered = 0
        self.why = f"no result within the {timeout_s}s round deadline"

    def answer(self) -> None:
        """One task came back (a result or a failure from the client)."""
        self.answered += 1
        if self.rule is None or self.answered != self.quorum:
            return
        now = time.monotonic()
        took = now - self.started
        extra = max(self.rule.min_s, self.rule.factor * took)
        if self.deadline is None or now + extra < self.deadline:
            self.deadline = now + extra
            self.why = (f"no result within the round's straggler deadline: {self.quorum} of its {self.sent} clients answered in "
                        f"{took:.1f}s, and the rest had {extra:.1f}s more (server.straggler_factor "
                        f"{self.rule.factor:g}, at least server.straggler_min_s {self.rule.min_s:g})")

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()
