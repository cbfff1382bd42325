"""Secure aggregation as a round protocol (:class:`SecureRounds`, which ``with_secure_aggregation``
composes into an algorithm): a synchronous round is four exchanges with the cohort, and the server
learns only the sum of the survivors' model deltas.

    advertise keys ─► share keys (routed, encrypted) ─► train, mask, send ─► reveal shares ─► Σ

Every exchange is an ordinary ``Channel.run`` with the cohort that is still there
(:func:`cohort.secagg.exchange.secure_sum`); a client that fails, times out or answers malformed drops
out at that stage, and the protocol goes on while at least t remain. The sum, decoded from the ring, enters the model's pipeline as a precombined
Aggregate (unweighted: every survivor counts once), so central DP's noise, the global steps and the
server optimizer apply as in any round. Per-client updates are never in the clear on the server.

Nor are per-client figures: each client's metrics and whether it was clipped ride in its masked
vector (:mod:`cohort.secagg.figures`), so the record gets only their means over the survivors, and
``clients.jsonl`` only who took part (or why a client failed). Federated evaluation runs the same
four exchanges (:func:`secure_evaluation`). Every record says which protection was on
(:func:`facts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from cohort.aggregation.pipeline import Aggregate
from cohort.core.arrays import num_parameters, unflatten
from cohort.core.errors import ConfigError
from cohort.core.records import SECAGG, merged
from cohort.core.types import MODEL, ClientFailure, Reply
from cohort.secagg import figures
from cohort.secagg.crypto import SecAggError
from cohort.secagg.exchange import Exchange, secure_sum
from cohort.secagg.protocol import bits_for, dequantize_sum
from cohort.secagg.tasks import GROUP


def facts(settings, cohort: int) -> dict[str, Any]:
    """What every record of a secure run says about the protection: the mode, t, the range."""
    return {"secagg_mode": "secagg+" if settings.degree else "secagg", "secagg_threshold": settings.threshold_for(cohort),
            "secagg_clip_range": settings.clip_range, **({"secagg_degree": settings.degree} if settings.degree else {})}


def participation(task: str, cid: int) -> dict[str, Any]:
    """A survivor's line in ``clients.jsonl``: that it took part, nothing it computed."""
    return {"client": int(cid), "task": task, "status": "ok"}


class _Named:
    """The metric names each accepted client sent in the clear (its values are in the masked sum)."""

    def __init__(self, ex: Exchange, task: str) -> None:
        self.ex, self.task, self.names = ex, task, {}

    def __call__(self, cid: int, reply: Reply) -> bool:
        try:
            self.names[cid] = figures.read_names(reply.arrays[GROUP].get("names"))
            return True
        except ValueError as e:
            self.ex.refuse(cid, f"{self.task}: {e}")
            return False

    def agreed(self, survivors: set[int]) -> list[str] | None:
        """The survivors' common names, or None if they differ (their slots then mean different things)."""
        found = {tuple(self.names.get(c, ())) for c in survivors}
        return list(found.pop()) if len(found) == 1 else None


@dataclass(frozen=True)
class SecureRounds:
    """Secure aggregation as the round protocol of an algorithm (``Algorithm.rounds``): the synchronous
    policy hands it a round's cohort (:meth:`fit`), federated evaluation its sampled clients
    (:meth:`evaluate`), and neither knows what it does. ``settings``: a ``SecureAggregation``."""

    settings: Any
    name = "secure aggregation"
    records_clients = False  # the server sees sums only: no client's examples or metrics are recorded

    def check(self, cohort: int) -> None:
        """Raise ConfigError if rounds of ``cohort`` clients cannot run (at least 2, at most the exact limit)."""
        self.settings.check(cohort)

    def fit(self, ctx, state, cohort, rctx, config: dict[str, Any], accs):
        """One round's fit: (accs with the sum folded in, the survivors' count, the failures, the record's
        figures, why there is no output or None)."""
        return secure_round(ctx, state, cohort, rctx, config, accs, self.settings)

    def evaluate(self, channel, timeout_s, state, clients, config: dict[str, Any]):
        """Federated evaluation: (the ``federated_*`` means, the failures, the clients' rows)."""
        return secure_evaluation(channel, timeout_s, self.settings, state, clients, config)


def secure_round(ctx, state, cohort, rctx, fit_config: dict[str, Any], accs, settings):
    """Run one secure round and put its sum into the round's accumulators ``accs``. Returns (accs, the
    survivors' count, the failures, the record's figures, why there is no output or None)."""
    ids = [int(c) for c in cohort]
    bits = bits_for(len(ids))
    model = state.groups[MODEL]
    length = num_parameters(model)
    ex = Exchange(ctx, state.version)
    own = {"clip_range": settings.clip_range, "bits": bits}
    private = ctx.algorithm.aggregators[MODEL].privacy
    if private is not None:  # central DP: the clients clip, since the server never sees an update
        own["l2_clip"] = float(state.steps[MODEL].privacy.clip)
    config = merged(fit_config, {SECAGG: own})
    record = facts(settings, len(ids))
    named = _Named(ex, "fit")
    try:
        total, survivors = secure_sum(ex, ids, settings, state.seed, rctx.round, "fit", state.groups, config,
                                      length + figures.FIT_LENGTH, named)
    except SecAggError as e:
        return accs, 0, ex.failures, record, f"secure aggregation: {e}"
    n = len(survivors)
    getattr(ctx, "rows", []).extend(participation("fit", c) for c in sorted(survivors))
    summed = dequantize_sum(total[:length], n, settings.clip_range, bits)
    l2_clipped, range_clipped = (int(v) for v in total[length:length + figures.FLAGS])
    record["secagg_range_clipped"] = range_clipped
    names = named.agreed(survivors)
    if names is None:
        record["secagg_metrics_error"] = "the survivors reported different metric names: their means are left out"
    else:
        means = figures.decode(total[length + figures.FLAGS:], names)
        record.update({k if k.startswith("train_") else f"train_{k}": v for k, v in means.items()})
    like = {k: np.zeros(a.shape, np.float64) for k, a in model.items()}
    aggregate = Aggregate(unflatten(summed, like), float(n), n)
    out = {}
    for g, acc in accs.items():
        acc = ctx.algorithm.aggregators[g].precombined(acc, aggregate)
        tally = acc.state.privacy
        if tally is not None and hasattr(tally, "clipped"):  # central DP: how many clipped, from the masked flags
            acc = acc._replace(state=acc.state._replace(privacy=tally._replace(clients=n, clipped=l2_clipped)))
        out[g] = acc
    return out, n, ex.failures, record, None


def secure_evaluation(channel, timeout_s, settings, state, clients, config: dict[str, Any]
                      ) -> tuple[dict[str, Any], list[ClientFailure], list[dict]]:
    """Federated evaluation of ``clients`` in four exchanges: (the means of their held-out loss and
    metrics, each client once, named ``federated_*``; the failures; their rows for clients.jsonl)."""
    ids = [int(c) for c in clients]
    ex = Exchange(SimpleNamespace(channel=channel, timeout_s=timeout_s), state.version)
    named = _Named(ex, "evaluate")
    try:
        settings.check(len(ids))
        total, survivors = secure_sum(ex, ids, settings, state.seed, state.round, "evaluate", state.groups,
                                      config, figures.LENGTH, named)
    except (SecAggError, ConfigError) as e:
        return {"federated_error": f"secure aggregation: {e}"}, ex.failures, []
    rows = [participation("evaluate", c) for c in sorted(survivors)]
    names = named.agreed(survivors)
    if names is None:
        return {"federated_error": "the survivors reported different metric names"}, ex.failures, rows
    return {f"federated_{k}": v for k, v in figures.decode(total, names).items()}, ex.failures, rows
