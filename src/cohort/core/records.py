"""Named records in a task's config, as Flower's ``RecordDict`` names its records.

A message's config holds the loop's own record at its top (``round``, ``seed``, ``version`` and the
algorithm's keys, which every trainer reads) and one table per component beside it, under the
component's name: ``app`` (an app's settings and this round's record), ``compression`` (how the update
travels up), ``secagg`` (this client's part in a secure exchange), ``site`` (a site federation's
agreement and what a statistics request needs). A component reads and writes only its own table, so
no key of one can shadow another's, and a protocol that wraps a task hands the inner task the config
without its own record (:func:`without`).

(Plain nested dicts rather than record classes: they travel as the JSON a deployed task's header
already carries, and pickle as they are.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cohort.core.errors import ConfigError

APP, COMPRESSION, SECAGG, SITE = "app", "compression", "secagg", "site"  # the records cohort's components own


def record(config: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    """The record ``name`` of ``config`` ({} when absent); a value there that is not a table is refused."""
    value = config.get(name) if isinstance(config, Mapping) else None
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"the task's {name!r} record is a {type(value).__name__}; expected a table of its settings")
    return value


def merged(*configs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The configs laid over each other, left to right; a record (a table) present in more than one is
    merged key by key, so a per-client addition (a secure exchange's inbox) keeps the round's record."""
    out: dict[str, Any] = {}
    for config in configs:
        for k, v in (config or {}).items():
            old = out.get(k)
            out[k] = {**old, **v} if isinstance(old, Mapping) and isinstance(v, Mapping) else v
    return out


def without(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``config`` without record ``name`` (what a protocol passes to the task it wraps)."""
    return {k: v for k, v in config.items() if k != name}
