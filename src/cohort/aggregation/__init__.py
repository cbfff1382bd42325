"""Server-side aggregation as a pipeline of small steps."""

from cohort.aggregation.pipeline import (
    Aggregate,
    Aggregator,
    AggregatorState,
    Combine,
    RoundAccumulator,
    Step,
    chain,
    divide,
    identity,
    process,
)
from cohort.aggregation.server_opt import sgd
from cohort.aggregation.weighting import uniform_weights, validate, weighted_sum

__all__ = [
    "Aggregate", "Aggregator", "AggregatorState", "Combine", "RoundAccumulator", "Step",
    "chain", "divide", "identity", "process", "sgd", "uniform_weights", "validate", "weighted_sum",
]
