"""What user code implements, the same in simulation and deployment.

Two levels, the simplest first:

- a :class:`Client` has ``fit(arrays, config) -> FitResult`` and ``evaluate``: enough for FedAvg;
- a :class:`Trainer` (what a framework adapter such as ``TorchClient`` is) also trains under
  :class:`Hooks` (an extra loss term, a gradient correction) and computes full gradients: what
  FedProx, SCAFFOLD and FedSGD ask for.

An algorithm's client half (``cohort.algorithms``) drives either; :func:`as_trainer` gives a plain
client the trainer interface and says clearly what it cannot do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError, DataError
from cohort.core.types import Config, EvaluateResult, FitResult, Metrics


@runtime_checkable
class Client(Protocol):
    """A party holding data. The server never sees the data, only what these methods return.

    ``config`` is the per-round config sent by the server; it always holds ``round`` (1-based) and
    ``seed`` (the run seed), from which a client derives its random streams. ``arrays`` are
    read-only: copy before changing them.
    """

    def fit(self, arrays: NamedArrays, config: Config) -> FitResult:
        """Train from ``arrays``; return the delta (trained minus received), examples used, metrics."""
        ...

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        """Evaluate ``arrays`` on held-out data; return mean loss, examples used, metrics."""
        ...


@dataclass(frozen=True)
class Hooks:
    """What an algorithm's client half asks of local training beyond plain steps."""

    proximal_mu: float = 0.0  # extra loss term μ/2·‖w − w_received‖² (FedProx); 0: none
    gradient_offset: NamedArrays | None = None  # added to every step's gradient (SCAFFOLD: c − cᵢ)
    anchor: NamedArrays | None = None  # the proximal term's centre; None: the arrays training starts from (Ditto: the global model)

    @property
    def plain(self) -> bool:
        return self.proximal_mu == 0 and self.gradient_offset is None


@dataclass(frozen=True)
class Trained:
    """The outcome of local training (or of a full-gradient pass)."""

    delta: NamedArrays  # trained minus received arrays; for ``gradient``: the mean-loss gradient
    num_examples: int
    num_steps: int = 0  # optimizer steps taken (SCAFFOLD's K)
    lr: float = 0.0  # the local learning rate used (SCAFFOLD's η_l)
    metrics: Metrics = field(default_factory=dict)
    facts: Mapping[str, float] = field(default_factory=dict)  # for the client's own privacy accounting, never sent (Reply.facts)


@runtime_checkable
class Trainer(Protocol):
    """A framework adapter: local training under hooks, full gradients, evaluation."""

    def train(self, arrays: NamedArrays, config: Config, hooks: Hooks) -> Trained: ...

    def gradient(self, arrays: NamedArrays, config: Config) -> Trained: ...

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult: ...


ClientFn = Callable[[int], "Client | Trainer"]
"""Builds the client of a client id. In simulation it is called only for sampled clients, so it must be
cheap: state that must outlive a call belongs in the algorithm's per-client state, which the runtime
keeps. For the process-pool backend it must pickle."""


class FitClientTrainer:
    """The trainer interface over a plain :class:`Client`: ``train`` without hooks is ``fit``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def train(self, arrays: NamedArrays, config: Config, hooks: Hooks) -> Trained:
        if not hooks.plain:
            raise ConfigError(f"{type(self.client).__name__} implements fit() only; this algorithm changes local "
                              "training (a proximal term or a gradient correction), which needs a trainer: "
                              "use cohort.TorchClient or implement train(arrays, config, hooks)")
        result = self.client.fit(arrays, config)
        if not isinstance(result, FitResult):
            raise TypeError(f"fit() returned a {type(result).__name__}; expected FitResult")
        return Trained(result.delta, result.num_examples, metrics=result.metrics)

    def gradient(self, arrays: NamedArrays, config: Config) -> Trained:
        raise ConfigError(f"{type(self.client).__name__} implements fit() only; FedSGD needs full gradients: "
                          "use cohort.TorchClient or implement gradient(arrays, config)")

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        return self.client.evaluate(arrays, config)


def as_trainer(client: object) -> Trainer:
    """``client`` itself if it is a trainer, else the trainer interface over its ``fit``."""
    if all(callable(getattr(client, m, None)) for m in ("train", "gradient", "evaluate")):
        return client  # type: ignore[return-value]
    if callable(getattr(client, "fit", None)) and callable(getattr(client, "evaluate", None)):
        return FitClientTrainer(client)  # type: ignore[arg-type]
    raise TypeError(f"client_fn returned a {type(client).__name__}; expected an object with fit() and evaluate() "
                    "(cohort.Client) or train(), gradient() and evaluate() (cohort.Trainer)")


class FrameworkClient:
    """What the framework adapters' clients share: ``fit`` is ``train`` without hooks, and evaluation
    needs held-out data (``self.test``: features and targets, or None)."""

    test: object = None
    client_id: int = 0

    def fit(self, arrays: NamedArrays, config: Config) -> FitResult:
        t = self.train(arrays, config)  # type: ignore[attr-defined]
        return FitResult(t.delta, t.num_examples, t.metrics)

    def require_test(self, what: str = "held-out data") -> None:
        if self.test is None or len(self.test[0]) == 0:  # type: ignore[index]
            raise DataError(f"client {self.client_id} has no {what} to evaluate on: data.holdout_fraction is 0, or the "
                            "client holds too few examples to keep any back")


def zeros_like(arrays: NamedArrays) -> NamedArrays:
    return {k: np.zeros(a.shape, a.dtype) for k, a in arrays.items()}
