"""cohort: federated learning that reads simply, simulates fast and deploys safely.

The pieces most programs need are here; everything else lives in its module (see README.md).
"""

from cohort.aggregation import Aggregator, Step, chain, process, sgd, uniform_weights, weighted_sum
from cohort.algorithms import Algorithm, fedavg, fedsgd
from cohort.channel import Channel, InProcessChannel, ProcessPoolChannel
from cohort.client.base import Client, ClientFn
from cohort.client.torch import TorchClient, TorchClientFactory, TorchEvaluator, TrainSettings, initial_arrays
from cohort.core.arrays import NamedArrays, from_torch, load_safetensors, save_safetensors, to_torch
from cohort.core.errors import (
    AuthError, CohortError, ConfigError, DataError, PrivacyBudgetExceeded, RoundFailed, TransportError, UpdateRejected,
)
from cohort.core.types import ClientFailure, ClientUpdate, EvaluateResult, FitResult, Instruction, RoundContext
from cohort.server.loop import LoopSettings, Target, run_round, run_rounds
from cohort.server.state import ServerState
from cohort.simulation import simulate

__version__ = "0.1.0"

__all__ = [
    "Aggregator", "Algorithm", "AuthError", "Channel", "Client", "ClientFailure", "ClientFn", "ClientUpdate",
    "CohortError", "ConfigError", "DataError", "EvaluateResult", "FitResult", "InProcessChannel", "Instruction",
    "LoopSettings", "NamedArrays", "PrivacyBudgetExceeded", "ProcessPoolChannel", "RoundContext", "RoundFailed",
    "ServerState", "Step", "Target", "TorchClient", "TorchClientFactory", "TorchEvaluator", "TrainSettings",
    "TransportError", "UpdateRejected", "chain", "fedavg", "fedsgd", "from_torch", "initial_arrays",
    "load_safetensors", "process", "run_round", "run_rounds", "save_safetensors", "sgd", "simulate", "to_torch",
    "uniform_weights", "weighted_sum",
]
