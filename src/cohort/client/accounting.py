"""Client-side privacy accounting, once for every reply on its way out: the raw facts a trainer
reported (DP-SGD's steps and sampling rate, local DP's multiplier, in ``Reply.facts``, a record of
their own) become the client's own ledger, kept in its state, and its cumulative ε (a metric). The client runtime calls it on a plain reply; a secure round
calls it before masking (``cohort.secagg.tasks``), since those facts must not travel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace


def account(reply, state):
    """``(reply, state)`` with the reply's raw privacy facts turned into ε and the ledger in ``state``."""
    facts = reply.facts if isinstance(reply.facts, Mapping) else {}
    if "dp_sgd_steps" in facts:
        from cohort.client.dpsgd import account as account_dpsgd

        reply, state = account_dpsgd(reply, state)
    if "ldp_noise_multiplier" in facts:
        from cohort.client.ldp import account as account_ldp

        reply, state = account_ldp(reply, state)
    return (replace(reply, facts={}) if reply.facts else reply), state  # the facts never leave the client
