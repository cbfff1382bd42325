"""Algorithms: recipes of a client half and a server half, chosen by name (``[server] algorithm``)."""

from cohort.algorithms.base import Algorithm, ClientHalf, ClientState
from cohort.algorithms.fedavg import LocalSteps, fedavg
from cohort.algorithms.fedprox import FedProxSettings, ProximalSteps, fedprox
from cohort.algorithms.fedsgd import FullGradient, fedsgd
from cohort.algorithms.personal import (
    PERSONAL, PERSONAL_INIT, DittoSettings, FedPerSettings, PersonalLayers, PersonalModel, ditto, fedper,
)
from cohort.algorithms.scaffold import CONTROL, ControlledSteps, ScaffoldSettings, scaffold

ALGORITHMS = {"fedavg": fedavg, "fedsgd": fedsgd, "fedprox": fedprox, "scaffold": scaffold, "fedper": fedper, "ditto": ditto}

__all__ = [
    "ALGORITHMS", "CONTROL", "PERSONAL", "PERSONAL_INIT", "Algorithm", "ClientHalf", "ClientState", "ControlledSteps",
    "DittoSettings", "FedPerSettings", "FedProxSettings", "FullGradient", "LocalSteps", "PersonalLayers", "PersonalModel",
    "ProximalSteps", "ScaffoldSettings", "ditto", "fedavg", "fedper", "fedprox", "fedsgd", "scaffold",
]
