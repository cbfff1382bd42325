"""Everything the server knows between rounds, in one explicit value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cohort.aggregation.pipeline import AggregatorState
from cohort.core.arrays import NamedArrays
from cohort.core.types import MODEL, Groups

if TYPE_CHECKING:  # pragma: no cover
    from cohort.algorithms.base import Algorithm


@dataclass(frozen=True)
class ServerState:
    """The whole state of a run after ``round`` rounds (server steps). Random streams are not stored:
    each derives from (seed, round, stage, client), so this value (with the per-client store) is
    all a resume needs."""

    round: int  # rounds (server steps) completed; 0 before the first
    groups: Groups  # global groups: "model", and the algorithm's own (SCAFFOLD's "control")
    steps: Mapping[str, AggregatorState]  # each group's pipeline state (server optimizer, ...)
    seed: int  # the run seed
    version: int = 0  # model version: how many times the global groups changed
    history: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)  # one record per round
    failed_rounds: int = 0  # consecutive rounds that did not stand
    clock: float = 0.0  # simulated seconds on the virtual clock (simulation only)
    policy: Any = None  # the round policy's own state (FedBuff: the work in flight); None when it has none

    @property
    def model(self) -> NamedArrays:
        """The global model's arrays."""
        return self.groups[MODEL]

    arrays = model  # the global model, under the name the first versions used

    def best(self, metric: str, mode: str = "max") -> Mapping[str, Any] | None:
        """The record with the best value of ``metric`` so far, or None if no round reported it."""
        rows = [r for r in self.history if isinstance(r.get(metric), (int, float))]
        if not rows:
            return None
        pick = max if mode == "max" else min
        return pick(rows, key=lambda r: r[metric])


def initial_state(algorithm: "Algorithm", model: NamedArrays, seed: int = 0) -> ServerState:
    """The state before round 1: ``model`` as the global model, every step state initialised."""
    from cohort.core.errors import ConfigError

    if not isinstance(model, Mapping) or not model:
        raise ConfigError(f"arrays is {type(model).__name__ if not isinstance(model, Mapping) else 'empty'}; "
                          "expected a non-empty dict of named numpy arrays (the initial model)")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        raise ConfigError(f"seed is {seed!r}; expected an integer from 0 to 2**63 - 1")
    for name, a in model.items():
        if not isinstance(name, str) or not isinstance(a, (np.ndarray, np.generic)) or a.dtype.kind not in "fiub":
            raise ConfigError(f"arrays[{name!r}] is a {type(a).__name__}{' of ' + str(a.dtype) if hasattr(a, 'dtype') else ''}; "
                              "expected string names and numeric numpy arrays")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ConfigError(f"arrays[{name!r}] holds NaN or inf; the initial model must be finite")
    groups, steps = algorithm.init({k: np.array(a, copy=True) for k, a in model.items()})  # the caller's arrays stay theirs
    return ServerState(0, groups, steps, seed)
