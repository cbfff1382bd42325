"""The plain mean: validation, weights, and the streaming weighted sum."""

from __future__ import annotations

from numbers import Integral
from dataclasses import replace

import numpy as np

from cohort.aggregation.pipeline import Aggregate, Combine, Step
from cohort.core.arrays import NamedArrays, check_like, spec_of
from cohort.core.errors import UpdateRejected
from cohort.core.types import ClientUpdate


MAX_EXAMPLES = 2**53  # counts and weights above this lose integer precision in float64 and can overflow a sum


def is_example_count(n: object) -> bool:
    """An integer (not a bool) from 1 to MAX_EXAMPLES: what a reply's ``num_examples`` must be."""
    return isinstance(n, Integral) and not isinstance(n, bool) and 1 <= n <= MAX_EXAMPLES


def validate() -> Step:
    """Reject an update whose names, shapes or dtypes differ from the model's, that holds NaN or inf,
    whose example count is not an integer >= 1, or whose weight is not a positive finite number.
    Always the first per-client step."""

    def update(u: ClientUpdate, spec, ctx):
        check_like(u.delta, spec, what=f"update of client {u.client_id}")
        n = u.num_examples
        if not is_example_count(n):
            raise UpdateRejected(f"update of client {u.client_id} has num_examples {n!r}; "
                                 f"expected an integer from 1 to {MAX_EXAMPLES}")
        if not (isinstance(u.weight, (int, float, np.number)) and 0 < u.weight <= MAX_EXAMPLES):
            raise UpdateRejected(f"update of client {u.client_id} has weight {u.weight!r}; expected a number in (0, {MAX_EXAMPLES}]")
        return u, spec

    return Step(spec_of, update)


def uniform_weights() -> Step:
    """Weight every client 1 instead of its example count: the unweighted mean."""
    return Step(lambda arrays: (), lambda u, state, ctx: (replace(u, weight=1.0), state))


def weighted_sum() -> Combine:
    """Σ weight · delta in float64, folded in as updates arrive: memory is one model, whatever the cohort."""

    def init(arrays: NamedArrays) -> tuple[NamedArrays, list]:
        return {name: np.zeros(a.shape, np.float64) for name, a in arrays.items()}, [0.0, 0]

    def add(acc, u: ClientUpdate):
        sums, totals = acc
        w = np.float64(u.weight)  # a float64 scalar makes w·delta float64 (NEP 50): no float32 overflow
        for name, s in sums.items():
            s += w * u.delta[name]
        totals[0] += float(w)
        totals[1] += 1
        return acc

    def result(acc) -> Aggregate:
        sums, (total_weight, count) = acc
        return Aggregate(sums, total_weight, count)

    return Combine(init, add, result)
