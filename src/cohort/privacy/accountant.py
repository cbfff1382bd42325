"""The privacy accountant: ε spent by a run of sampled Gaussian rounds, from ``dp-accounting``.

A run's privacy history is a *ledger*: runs of rounds ``(q, z, count)`` in which a share ``q`` of
the clients was sampled and the sum was noised with noise multiplier ``z``. It is a plain tuple, so
it goes into the checkpoint with the rest of the state, and ε after a resume is the same as before.
ε at a given δ is computed from the whole ledger by ``dp-accounting`` (Google's library): the RDP
accountant (Mironov 2017) by default, or privacy loss distributions (PLD, tighter, slower) as an
option. Each round is accounted as a Poisson-sampled Gaussian mechanism with rate ``q`` = cohort /
population, the standard approximation for a fixed-size uniform sample (as TensorFlow Federated and
Opacus account it).
"""

from __future__ import annotations

import functools
import logging
import math

from cohort.core.errors import ConfigError

ACCOUNTANTS = ("rdp", "pld")
Ledger = tuple[tuple[float, float, int], ...]


def record(ledger: Ledger, q: float, z: float, rounds: int = 1) -> Ledger:
    """``ledger`` with ``rounds`` more rounds of rate ``q`` and noise multiplier ``z``."""
    if ledger and ledger[-1][0] == q and ledger[-1][1] == z:
        return (*ledger[:-1], (q, z, ledger[-1][2] + rounds))
    return (*ledger, (float(q), float(z), int(rounds)))


def check(delta: float, accountant: str) -> None:
    if not (isinstance(delta, (int, float)) and not isinstance(delta, bool) and 0 < delta < 1):
        raise ConfigError(f"privacy.delta is {delta!r}; expected 0 < δ < 1, well below 1 / (number of clients), e.g. 1e-5")
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"privacy.accountant is {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}")


def _library():
    try:
        import dp_accounting
        from dp_accounting import pld, rdp
    except ImportError as e:
        raise ConfigError("differential privacy needs the dp-accounting library: pip install 'cohort[privacy]'") from e
    return dp_accounting, rdp, pld


class _QuietAbsl(logging.Filter):
    """dp-accounting logs a warning for every RDP order whose series does not converge (it leaves
    that order out, which is correct); they are not the user's concern."""

    def filter(self, rec: logging.LogRecord) -> bool:
        return "failed to converge" not in rec.getMessage()


@functools.lru_cache(maxsize=512)
def epsilon(ledger: Ledger, delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` after the rounds of ``ledger``; 0 for an empty one."""
    if not ledger:
        return 0.0
    dp, rdp, pld = _library()
    events = []
    for q, z, count in ledger:
        gaussian = dp.GaussianDpEvent(z)
        event = gaussian if q >= 1 else dp.PoissonSampledDpEvent(q, gaussian)
        events.append(dp.SelfComposedDpEvent(event, count))
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    quiet = _QuietAbsl()
    absl = logging.getLogger("absl")
    absl.addFilter(quiet)
    try:
        acc.compose(dp.ComposedDpEvent(events))
        eps = float(acc.get_epsilon(delta))
    finally:
        absl.removeFilter(quiet)
    return eps if math.isfinite(eps) else math.inf
