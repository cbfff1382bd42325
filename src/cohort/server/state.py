"""Everything the server knows between rounds, in one explicit value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cohort.aggregation.pipeline import AggregatorState
from cohort.core.arrays import NamedArrays


@dataclass(frozen=True)
class ServerState:
    """The whole state of a run after ``round`` rounds. Random streams are not stored: each derives
    from (seed, round, stage, client), so this value is all a resume needs."""

    round: int  # rounds completed (0 before the first)
    arrays: NamedArrays  # the global model
    aggregator: AggregatorState  # per-client, global and server-optimizer step states
    seed: int  # the run seed
    history: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)  # one record per round
    failed_rounds: int = 0  # consecutive rounds that did not stand

    def best(self, metric: str, mode: str = "max") -> Mapping[str, Any] | None:
        """The record with the best value of ``metric`` so far, or None if no round reported it."""
        rows = [r for r in self.history if r.get(metric) is not None]
        if not rows:
            return None
        pick = max if mode == "max" else min
        return pick(rows, key=lambda r: r[metric])
