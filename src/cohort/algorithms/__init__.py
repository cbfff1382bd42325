"""Algorithms: recipes of a client half and a server half, chosen by name (``[server] algorithm``)."""

from cohort.algorithms.base import Algorithm, ClientHalf, ClientState
from cohort.algorithms.fedavg import LocalSteps, fedavg
from cohort.algorithms.fedprox import FedProxSettings, ProximalSteps, fedprox
from cohort.algorithms.fedsgd import FullGradient, fedsgd
from cohort.algorithms.personal import (
    PERSONAL, PERSONAL_INIT, DittoSettings, FedPerSettings, PersonalLayers, PersonalModel, ditto, fedper,
)
from cohort.algorithms.scaffold import CONTROL, ControlledSteps, ScaffoldSettings, scaffold

from cohort.core.sections import register_section

ALGORITHMS: dict = {}  # server.algorithm's names -> factories (keywords: server_lr, server_momentum, weighted, and the section's)


def register_algorithm(name: str, factory, settings: type | None = None) -> None:
    """Make ``server.algorithm = name`` build ``factory``; ``settings`` (a frozen dataclass) is its own
    section ``[name]``, whose fields reach the factory as keywords. A user's algorithm registers the same
    way, in the module its ``--app`` or config names (and, deployed, in the clients' processes too)."""
    ALGORITHMS[name] = factory
    if settings is not None:
        register_section(name, settings, chosen_by="server.algorithm")


register_algorithm("fedavg", fedavg)
register_algorithm("fedsgd", fedsgd)
register_algorithm("fedprox", fedprox, FedProxSettings)
register_algorithm("scaffold", scaffold, ScaffoldSettings)
register_algorithm("fedper", fedper, FedPerSettings)
register_algorithm("ditto", ditto, DittoSettings)

__all__ = [
    "ALGORITHMS", "CONTROL", "PERSONAL", "PERSONAL_INIT", "Algorithm", "ClientHalf", "ClientState", "ControlledSteps",
    "DittoSettings", "FedPerSettings", "FedProxSettings", "FullGradient", "LocalSteps", "PersonalLayers", "PersonalModel",
    "ProximalSteps", "ScaffoldSettings", "ditto", "register_algorithm", "fedavg", "fedper", "fedprox", "fedsgd", "scaffold",
]
