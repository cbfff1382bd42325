"""An algorithm is a recipe: what clients are told each round, and how the server aggregates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cohort.aggregation.pipeline import Aggregator


@dataclass(frozen=True)
class Algorithm:
    name: str
    aggregator: Aggregator
    client_config: Mapping[str, Any] = field(default_factory=dict)  # sent to every client, every round
    schedule: Callable[[int], Mapping[str, Any]] | None = None  # per-round additions, e.g. a decayed lr

    def configure(self, round: int) -> dict[str, Any]:
        """The config for ``round`` (the loop adds ``round`` and ``seed``)."""
        extra = self.schedule(round) if self.schedule is not None else {}
        return {**self.client_config, **extra}
