"""Algorithms: recipes of a client half and a server half, chosen by name (``[server] algorithm``)."""

from cohort.algorithms.base import Algorithm, ClientHalf, ClientState
from cohort.algorithms.fedavg import LocalSteps, fedavg
from cohort.algorithms.fedprox import FedProxSettings, ProximalSteps, fedprox
from cohort.algorithms.fedsgd import FullGradient, fedsgd
from cohort.algorithms.scaffold import CONTROL, ControlledSteps, ScaffoldSettings, scaffold

ALGORITHMS = {"fedavg": fedavg, "fedsgd": fedsgd, "fedprox": fedprox, "scaffold": scaffold}

__all__ = [
    "ALGORITHMS", "CONTROL", "Algorithm", "ClientHalf", "ClientState", "ControlledSteps", "FedProxSettings",
    "FullGradient", "LocalSteps", "ProximalSteps", "ScaffoldSettings", "fedavg", "fedprox", "fedsgd", "scaffold",
]
