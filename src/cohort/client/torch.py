"""PyTorch clients: local training from a model factory, a client's data and an optimizer setting.

The hot path is lean on purpose: one model per process, reused by every client that process runs;
a client's examples are gathered from the shared dataset only when it is sampled; batches are slices
of one permuted copy per epoch; the delta is computed once, from the state_dict, as numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cohort.core.arrays import NamedArrays, from_torch, to_torch
from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng, torch_seed
from cohort.core.types import Config, EvaluateResult, FitResult

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainSettings:
    """Local training of one client in one round."""

    epochs: int = 1  # E: passes over the client's examples
    batch_size: int = 10  # B: examples per step; 0 means the whole client dataset (B = ∞)
    optimizer: str = "sgd"  # "sgd" or "adam"; a fresh optimizer every round
    lr: float = 0.01  # local learning rate
    momentum: float = 0.0  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty, both optimizers

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"client.epochs is {self.epochs!r}; expected an integer >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 0):
            raise ConfigError(f"client.batch_size is {self.batch_size!r}; expected an integer >= 1, or 0 for the whole dataset")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"client.optimizer is {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"client.lr is {self.lr!r}; expected a finite number > 0")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"client.momentum is {self.momentum!r}; expected 0 <= momentum < 1")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"client.weight_decay is {self.weight_decay!r}; expected a finite number >= 0")

    def override(self, config: Config) -> "TrainSettings":
        """These settings with any of their fields that the round's config sets (e.g. a decayed ``lr``)."""
        changes = {f.name: config[f.name] for f in fields(self) if f.name in config}
        return replace(self, **changes) if changes else self


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if output.ndim == target.ndim + 1 and output.shape[-1] == 1:
        output = output.squeeze(-1)
    return F.mse_loss(output, target)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": _mse,
}


def loss_for_task(task: str) -> str:
    return "cross_entropy" if task == "classification" else "mse"


def to_tensors(x: np.ndarray, y: np.ndarray, x_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 features (times ``x_scale``) and labels (int64) or targets (float32) as torch tensors."""
    x, y = (a if a.flags.writeable else a.copy() for a in (x, y))  # torch cannot view read-only memory
    xt = torch.from_numpy(np.asarray(x, order="C")).to(torch.float32)
    if x_scale != 1.0:
        xt.mul_(x_scale)
    yt = torch.from_numpy(np.asarray(y, order="C"))
    yt = yt.to(torch.int64) if yt.dtype in (torch.int32, torch.int64, torch.uint8, torch.int16) else yt.to(torch.float32)
    return xt, yt


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def train_epochs(model, x, y, loss_fn, s: TrainSettings, shuffle: np.random.Generator) -> float:
    """Local SGD/Adam: ``s.epochs`` passes in a seeded order, a last partial batch included. Mean loss."""
    n = len(x)
    b = n if s.batch_size == 0 else min(s.batch_size, n)
    optimizer = make_optimizer(model, s)
    model.train()
    total = 0.0
    for _ in range(s.epochs):
        perm = torch.from_numpy(shuffle.permutation(n))
        xs, ys = x[perm], y[perm]  # one gather per epoch; batches below are views
        for start in range(0, n, b):
            xb, yb = xs[start : start + b], ys[start : start + b]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)  # a CPU scalar read: cheaper than tensor arithmetic per step
    return total / (n * s.epochs)


def full_gradient(model, x, y, loss_fn, batch_size: int) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of the mean loss over all of (x, y), accumulated over batches. Mean loss."""
    n = len(x)
    b = n if batch_size == 0 else min(batch_size, n)
    model.train()
    model.zero_grad(set_to_none=True)
    total = 0.0
    for start in range(0, n, b):
        xb, yb = x[start : start + b], y[start : start + b]
        loss = loss_fn(model(xb), yb)
        (loss * (len(xb) / n)).backward()
        total += loss.item() * len(xb)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return grads, total / n


@torch.no_grad()
def evaluate_model(model, x, y, loss: str, batch_size: int = 1024) -> tuple[float, int, dict[str, float]]:
    """Mean loss over (x, y); accuracy for classification, R² for regression."""
    model.eval()
    loss_fn = LOSSES[loss]
    n = len(x)
    total_loss, correct = 0.0, 0
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model(xb)
        total_loss += float(loss_fn(out, yb)) * len(xb)
        if loss == "cross_entropy":
            correct += int((out.argmax(dim=-1) == yb).sum())
    if loss == "cross_entropy":
        return total_loss / n, n, {"accuracy": correct / n}
    variance = float(y.double().var(unbiased=False)) if n > 1 else 0.0
    return total_loss / n, n, ({"r2": 1.0 - (total_loss / n) / variance} if variance > 0 else {})


def load_arrays(model: torch.nn.Module, arrays: NamedArrays) -> None:
    """Copy named arrays into the model; a mismatch names the offending entries."""
    try:
        model.load_state_dict(to_torch(arrays), strict=True)
    except RuntimeError as e:
        raise ConfigError(f"the arrays do not fit the model: {e}") from e


class TorchClient:
    """A client training a torch model on its own examples.

    ``fit`` trains with ``settings`` (any field can be overridden per round through the config) and
    returns the delta; with ``config["mode"] == "gradient"`` it instead returns the negative full-batch
    gradient (FedSGD). Shuffling and dropout are seeded from (seed, round, client id).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
        settings: TrainSettings = TrainSettings(),
        loss: str = "cross_entropy",
        client_id: int = 0,
        seed: int = 0,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"loss is {loss!r}; expected one of {', '.join(LOSSES)}")
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"client {client_id} has {len(x)} examples and {len(y)} labels; expected the same count, at least 1")
        self.model, self.x, self.y, self.test = model, x, y, test
        self.settings, self.loss, self.client_id, self.seed = settings, loss, client_id, seed

    def fit(self, arrays: NamedArrays, config: Config) -> FitResult:
        settings = self.settings.override(config)
        round_, seed = int(config.get("round", 0)), int(config.get("seed", self.seed))
        load_arrays(self.model, arrays)
        loss_fn = LOSSES[self.loss]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(seed, round_, Stage.TORCH, self.client_id))
            if config.get("mode", "train") == "gradient":
                grads, mean_loss = full_gradient(self.model, self.x, self.y, loss_fn, settings.batch_size)
                delta = _delta(self.model, arrays, replace_with={k: -g for k, g in grads.items()})
            else:
                shuffle = rng(seed, round_, Stage.SHUFFLE, self.client_id)
                mean_loss = train_epochs(self.model, self.x, self.y, loss_fn, settings, shuffle)
                delta = _delta(self.model, arrays)
        return FitResult(delta, len(self.x), {"train_loss": mean_loss})

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        if self.test is None or len(self.test[0]) == 0:
            raise DataError(f"client {self.client_id} has no held-out data to evaluate on; set data.holdout_fraction > 0")
        load_arrays(self.model, arrays)
        loss, n, metrics = evaluate_model(self.model, *self.test, self.loss)
        return EvaluateResult(loss, n, metrics)


def _delta(model: torch.nn.Module, old: NamedArrays, replace_with: Mapping[str, torch.Tensor] | None = None) -> NamedArrays:
    replace_with = replace_with or {}
    new = model.state_dict()
    return {
        name: (replace_with[name].numpy() if name in replace_with else np.subtract(t.numpy(), old[name]))
        for name, t in new.items()
    }


class TorchClientFactory:
    """The ``client_fn`` of a simulation: client ``i`` trains on ``dataset[train[i]]``.

    One model per process, built on first use and reused by every client (``__getstate__`` leaves it
    out, so each worker of a process pool builds its own); a client's examples are gathered only when
    the client is sampled.
    """

    def __init__(self, model_fn: Callable[[], torch.nn.Module], dataset, train, test=None, *,
                 settings: TrainSettings = TrainSettings(), seed: int = 0) -> None:
        self.model_fn, self.dataset, self.train, self.test = model_fn, dataset, train, test
        self.settings, self.seed = settings, seed
        self.loss = loss_for_task(dataset.task)
        self._model: torch.nn.Module | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = self.model_fn()
        return self._model

    def __len__(self) -> int:
        return len(self.train)

    def __call__(self, client_id: int) -> TorchClient:
        ds = self.dataset
        idx = self.train[client_id]
        x, y = to_tensors(ds.x[idx], ds.y[idx], ds.x_scale)
        test = None
        if self.test is not None:
            tidx = self.test[client_id]
            test = to_tensors(ds.x[tidx], ds.y[tidx], ds.x_scale)
        return TorchClient(self.model, x, y, test=test, settings=self.settings, loss=self.loss,
                           client_id=client_id, seed=self.seed)


class TorchEvaluator:
    """Centralized evaluation on a server-side test set: ``evaluator(arrays) -> metrics``."""

    def __init__(self, model_fn: Callable[[], torch.nn.Module], dataset, batch_size: int = 1024) -> None:
        self.model = model_fn()
        self.x, self.y = to_tensors(dataset.x, dataset.y, dataset.x_scale)
        self.loss, self.batch_size = loss_for_task(dataset.task), batch_size

    def __call__(self, arrays: NamedArrays) -> dict[str, float]:
        load_arrays(self.model, arrays)
        loss, n, metrics = evaluate_model(self.model, self.x, self.y, self.loss, self.batch_size)
        return {"loss": loss, **metrics}


def initial_arrays(model_fn: Callable[[], torch.nn.Module], seed: int) -> NamedArrays:
    """The global arrays of round 0: the model's own initialisation under the run seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(seed, 0, Stage.INIT))
        return from_torch(model_fn().state_dict())
