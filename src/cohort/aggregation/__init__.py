"""Server-side aggregation as a pipeline of small steps."""

from cohort.aggregation.compose import process
from cohort.aggregation.pipeline import (
    Aggregate, Aggregator, AggregatorState, Combine, Mechanism, RoundAccumulator, Step, chain, divide,
)
from cohort.aggregation.server_opt import AdaptiveState, SgdState, adaptive, sgd
from cohort.aggregation.weighting import (
    divide_by_population, staleness_function, staleness_weight, uniform_weights, validate, weighted_sum,
)

__all__ = [
    "AdaptiveState", "Aggregate", "Aggregator", "AggregatorState", "Combine", "Mechanism", "RoundAccumulator", "SgdState", "Step", "adaptive",
    "chain", "divide", "divide_by_population", "process", "sgd", "staleness_function", "staleness_weight", "uniform_weights",
    "validate", "weighted_sum"
]
