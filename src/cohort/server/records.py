"""What goes into a round's record: metric means, evaluation results, failures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, EvaluateResult, Reply

MAX_FAILURES_RECORDED = 10

# Keys the loop writes itself. Clients' fit metrics are named train_*, and a server-side evaluation
# may not use these.
LOOP_KEYS = frozenset({
    "round", "status", "version", "clients_sampled", "clients_succeeded", "clients_failed", "aggregate_error",
    "evaluations_failed", "bytes_sent", "bytes_received", "seconds", "simulated_time", "failures",
    "staleness_mean", "staleness_max",
})


class WeightedMean:
    """Example-weighted means of numeric metrics across clients."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.maxima: dict[str, float] = {}  # of privacy spent (keys ending in "epsilon"): the worst client counts

    def add(self, metrics: Mapping[str, Any], weight: float) -> None:
        if not isinstance(metrics, Mapping):  # a client's metrics are informative; bad ones are dropped
            return
        for k, v in metrics.items():
            if not isinstance(k, str) or not isinstance(v, Real) or isinstance(v, bool):
                continue
            try:
                value = float(v) * weight
            except OverflowError:  # an int too large for a float
                continue
            if math.isfinite(value):
                self.sums[k] = self.sums.get(k, 0.0) + value
                self.weights[k] = self.weights.get(k, 0.0) + weight
                if k.endswith("epsilon"):
                    self.maxima[k] = max(self.maxima.get(k, -math.inf), float(v))

    def result(self) -> dict[str, float]:
        out = {k: s / self.weights[k] for k, s in self.sums.items() if self.weights[k] > 0}
        out.update({f"{k}_max": v for k, v in self.maxima.items()})
        return out


def train_metrics(mean: WeightedMean) -> dict[str, float]:
    """Clients' own fit metrics are about training: named train_*, never a key of the loop's own."""
    return {k if k.startswith("train_") else f"train_{k}": v for k, v in mean.result().items()}


def checked_evaluation(result: object) -> dict[str, float]:
    """A server-side evaluation's metrics: a dict of names to numbers; non-finite values are left out."""
    if not isinstance(result, Mapping):
        raise ConfigError(f"the evaluate function returned a {type(result).__name__}; expected a dict of "
                          "metric name -> number, e.g. {'loss': 0.3, 'accuracy': 0.9}")
    out = {}
    for k, v in result.items():
        if not isinstance(k, str):
            raise ConfigError(f"the evaluate function returned the key {k!r}; metric names must be strings")
        if k in LOOP_KEYS or k.startswith(("train_", "federated_")):
            raise ConfigError(f"the evaluate function returned the metric {k!r}, a name the round record uses "
                              "itself; rename it (e.g. 'eval_" + k + "')")
        if not isinstance(v, Real) or isinstance(v, bool):
            raise ConfigError(f"the evaluate function returned {k!r} = {v!r}; expected a number")
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def failure_lines(failures: list[ClientFailure]) -> list[str]:
    return [f"client {f.client_id} ({f.stage}): {f.reason}" for f in failures[:MAX_FAILURES_RECORDED]]


def client_row(task: str, client_id: int, outcome: object) -> dict[str, Any]:
    """One client's part of a round, as a line of ``clients.jsonl``: what it reported (examples, loss,
    metrics, its own seconds, bytes sent up) or why it failed. Never an array."""
    row: dict[str, Any] = {"client": int(client_id), "task": task}
    if isinstance(outcome, ClientFailure):
        return {**row, "status": "failed", "stage": getattr(outcome.stage, "value", str(outcome.stage)),
                "failure": str(outcome.reason)[:500]}
    row["status"] = "ok"
    if isinstance(outcome, (Reply, EvaluateResult)):
        row["examples"] = outcome.num_examples
        if isinstance(outcome, EvaluateResult) and _finite(outcome.loss):
            row["loss"] = float(outcome.loss)
        metrics = outcome.metrics if isinstance(outcome.metrics, Mapping) else {}
        row["metrics"] = {k: float(v) for k, v in metrics.items() if isinstance(k, str) and _finite(v)}
        row["seconds"] = round(float(outcome.seconds), 6) if _finite(outcome.seconds) else None
        if isinstance(outcome, Reply) and isinstance(outcome.arrays, Mapping):
            row["bytes"] = sum(getattr(a, "nbytes", 0) for g in outcome.arrays.values() if isinstance(g, Mapping)
                               for a in g.values())
    return row


def _finite(v: object) -> bool:
    try:
        return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))
    except OverflowError:  # an int too large for a float
        return False
