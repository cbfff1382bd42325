"""cohort: federated learning that reads simply, simulates fast and deploys safely.

The pieces most programs need are here; everything else lives in its module (see docs/architecture.md).
Importing cohort imports no framework: the torch, Keras and scikit-learn adapters (``TorchClient``,
``KerasClient``, ``SklearnClient`` and friends) are loaded the first time one of their names is used.
"""

from cohort.aggregation import Aggregate, Aggregator, Combine, Step, chain, process, sgd, staleness_weight, uniform_weights, weighted_sum
from cohort.algorithms import Algorithm, ClientHalf, ditto, fedavg, fedper, fedprox, fedsgd, scaffold
from cohort.channel import Channel, InProcessChannel, ProcessPoolChannel
from cohort.client.base import Client, ClientFn, Hooks, Trained, Trainer
from cohort.client.context import ClientApp, Context
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

_LAZY = {  # name -> (module, attribute): the framework adapters, imported on first use
    **{n: ("cohort.client.torch", n) for n in ("TorchClient", "TorchClientFactory", "TorchEvaluator", "initial_arrays")},
    "KerasClient": ("cohort.client.keras", "KerasClient"), "keras_weights": ("cohort.client.keras", "weights_of"),
    "App": ("cohort.app", "App"), "ServerContext": ("cohort.app", "ServerContext"),
    "SklearnClient": ("cohort.client.sklearn", "SklearnClient"), "SklearnModel": ("cohort.client.sklearn", "SklearnModel"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'cohort' has no attribute {name!r}")


__all__ = [
    "App", "ClientApp", "Context", "ServerContext",
    "Aggregate", "Aggregator", "Algorithm", "AuthError", "Channel", "Client", "ClientFailure", "ClientFn",
    "ClientHalf", "ClientStateStore", "ClientUpdate", "CohortError", "Combine", "ConfigError", "DataError",
    "EvaluateResult", "FailureStage", "FedBuff", "FitResult", "Hooks", "InProcessChannel", "Instruction",
    "LoopSettings", "Message", "NamedArrays", "PrivacyBudgetExceeded", "ProcessPoolChannel", "Reply",
    "KerasClient", "RoundContext", "RoundFailed", "ServerState", "SklearnClient", "SklearnModel", "Step", "Target",
    "TorchClient", "TorchClientFactory", "ditto", "fedper", "keras_weights",
    "TorchEvaluator", "TrainSettings", "Trained", "Trainer", "TransportError", "UpdateRejected", "chain", "fedavg",
    "fedprox", "fedsgd", "from_torch", "initial_arrays", "initial_state", "load_safetensors", "process", "run",
    "run_rounds", "save_safetensors", "scaffold", "sgd", "simulate", "staleness_weight", "to_torch",
    "uniform_weights", "weighted_sum",
]
