"""cohort: federated learning that reads simply, simulates fast and deploys safely.

The pieces most programs need are here; everything else lives in its module (see README.md).
Importing cohort imports no framework: the torch adapter (``TorchClient`` and friends) is loaded
the first time one of its names is used.
"""

from cohort.aggregation import Aggregate, Aggregator, Combine, Step, chain, process, sgd, staleness_weight, uniform_weights, weighted_sum
from cohort.algorithms import Algorithm, ClientHalf, fedavg, fedprox, fedsgd, scaffold
from cohort.channel import Channel, InProcessChannel, ProcessPoolChannel
from cohort.client.base import Client, ClientFn, Hooks, Trained, Trainer
from cohort.client.settings import TrainSettings
from cohort.client.store import ClientStateStore
from cohort.core.arrays import NamedArrays, from_torch, load_safetensors, save_safetensors, to_torch
from cohort.core.errors import (
    AuthError, CohortError, ConfigError, DataError, PrivacyBudgetExceeded, RoundFailed, TransportError, UpdateRejected,
)
from cohort.core.types import (
    ClientFailure, ClientUpdate, EvaluateResult, FailureStage, FitResult, Instruction, Message, Reply, RoundContext,
)
from cohort.server.loop import LoopSettings, Target, run, run_rounds
from cohort.server.policies import FedBuff
from cohort.server.state import ServerState, initial_state
from cohort.simulation import simulate

__version__ = "0.2.0"

_TORCH_NAMES = ("TorchClient", "TorchClientFactory", "TorchEvaluator", "initial_arrays")


def __getattr__(name: str):
    if name in _TORCH_NAMES:  # the torch adapter, imported on first use
        from cohort.client import torch as torch_adapter

        return getattr(torch_adapter, name)
    raise AttributeError(f"module 'cohort' has no attribute {name!r}")


__all__ = [
    "Aggregate", "Aggregator", "Algorithm", "AuthError", "Channel", "Client", "ClientFailure", "ClientFn",
    "ClientHalf", "ClientStateStore", "ClientUpdate", "CohortError", "Combine", "ConfigError", "DataError",
    "EvaluateResult", "FailureStage", "FedBuff", "FitResult", "Hooks", "InProcessChannel", "Instruction",
    "LoopSettings", "Message", "NamedArrays", "PrivacyBudgetExceeded", "ProcessPoolChannel", "Reply",
    "RoundContext", "RoundFailed", "ServerState", "Step", "Target", "TorchClient", "TorchClientFactory",
    "TorchEvaluator", "TrainSettings", "Trained", "Trainer", "TransportError", "UpdateRejected", "chain", "fedavg",
    "fedprox", "fedsgd", "from_torch", "initial_arrays", "initial_state", "load_safetensors", "process", "run",
    "run_rounds", "save_safetensors", "scaffold", "sgd", "simulate", "staleness_weight", "to_torch",
    "uniform_weights", "weighted_sum",
]
