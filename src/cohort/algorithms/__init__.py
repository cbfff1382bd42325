"""Recipes of client and server behaviour."""

from cohort.algorithms.base import Algorithm
from cohort.algorithms.fedavg import fedavg
from cohort.algorithms.fedsgd import fedsgd

ALGORITHMS = {"fedavg": fedavg, "fedsgd": fedsgd}

__all__ = ["ALGORITHMS", "Algorithm", "fedavg", "fedsgd"]
