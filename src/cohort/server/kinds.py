"""The round policies by name (``server.policy``), each with its settings section and what it supports.

One table: the config checks names and declared abilities against it, the recipe builds the chosen
policy from its own section (``cohort.core.sections``), and nothing else names a policy. A user's
policy registers here the same way (``register_policy``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cohort.core.sections import register_section
from cohort.server.fedasync import FedAsyncSettings
from cohort.server.policies import FedBuffSettings


@dataclass(frozen=True)
class PolicyKind:
    build: Callable[[Any], Any] | None = None  # its section's settings -> the policy object; None: synchronous rounds
    samples_rounds: bool = False  # it samples a cohort per round, so over-selection applies (server.over_selection)


POLICIES: dict[str, PolicyKind] = {}


def register_policy(name: str, kind: PolicyKind, settings: type | None = None) -> None:
    """Make ``server.policy = name`` run ``kind``; ``settings`` is its section ``[name]``, which ``kind.build`` gets."""
    POLICIES[name] = kind
    if settings is not None:
        register_section(name, settings, chosen_by="server.policy")


register_policy("sync", PolicyKind(samples_rounds=True))
register_policy("fedbuff", PolicyKind(build=FedBuffSettings.policy), FedBuffSettings)
register_policy("fedasync", PolicyKind(build=FedAsyncSettings.policy), FedAsyncSettings)  # FedBuff with one arrival per step
