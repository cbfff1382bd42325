"""``process``: a whole server-side pipeline from its parts (its own module, so the step families it
defaults to can import the pipeline's types without a cycle)."""

from __future__ import annotations

from collections.abc import Sequence

from cohort.aggregation.pipeline import Aggregator, Combine, Mechanism, Step, chain
from cohort.aggregation.server_opt import sgd
from cohort.aggregation.weighting import validate, weighted_sum


def process(
    pre: Sequence[Step] = (),
    combine: Combine | None = None,
    post: Sequence[Step] = (),
    server_optimizer: Step | None = None,
    privacy: Mechanism | None = None,
) -> Aggregator:
    """Build an aggregator. Every update is validated (names, shapes, finite values, weight) before
    ``pre`` runs; ``combine`` defaults to the weighted sum and ``server_optimizer`` to ``sgd(1.0)``;
    ``privacy`` (e.g. ``cohort.privacy.central_dp(...)``) clips after ``pre`` and noises the sum."""
    return Aggregator(
        pre=chain(validate(), *pre),
        combine=combine if combine is not None else weighted_sum(),
        post=chain(*post),
        server_optimizer=server_optimizer if server_optimizer is not None else sgd(1.0),
        privacy=privacy,
    )

