"""PyTorch clients: local training from a model factory, a client's data and an optimizer setting
(the steps themselves are in :mod:`cohort.client.torch_steps`).

The hot path is lean on purpose: one model per process, reused by every client that process runs;
a client's examples are gathered from the shared dataset only when it is sampled; batches are slices
of one permuted copy per epoch; the delta is computed once, from the state_dict, as numpy arrays.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohort.client.base import FrameworkClient, Hooks, Trained
from cohort.client.settings import TrainSettings
from cohort.client.torch_dense import DenseStack, left_out, used_columns
from cohort.client.torch_steps import (  # noqa: F401 (the functions are cohort.client.torch's API too)
    LOSSES, evaluate_model, evaluation_batch, full_gradient, is_convolutional, is_image_model, load_arrays, loss_for_task,
    make_optimizer, seed_torch, takes_channels_last, to_tensors, train_epochs)
from cohort.core.arrays import NamedArrays, from_torch
from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng, torch_seed
from cohort.core.types import Config, EvaluateResult


class TorchClient(FrameworkClient):
    """A client training a torch model on its own examples: a :class:`cohort.Trainer`.

    ``train`` runs local SGD/Adam with ``settings`` (any field can be overridden per round through
    the config) under the algorithm's hooks; ``gradient`` returns the full-batch gradient (FedSGD);
    ``fit`` is ``train`` without hooks. Shuffling and dropout are seeded from (seed, round, client id).
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
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}; expected a torch.nn.Module")
        _check_tensors(x, y, loss, "training data")
        if test is not None:
            _check_tensors(*test, loss, "held-out data", allow_empty=True)
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"client {client_id} has {len(x)} examples and {len(y)} labels; expected the same count, at least 1")
        self.model, self.x, self.y, self.test = model, x, y, test
        self.settings, self.loss, self.client_id, self.seed = settings, loss, client_id, seed

    def _streams(self, config: Config) -> tuple[int, int]:
        return int(config.get("round", 0)), int(config.get("seed", self.seed))

    def train(self, arrays: NamedArrays, config: Config, hooks: Hooks = Hooks()) -> Trained:
        settings = self.settings.override(config)
        round_, seed = self._streams(config)
        load_arrays(self.model, arrays)
        facts: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            seed_torch(torch_seed(seed, round_, Stage.TORCH, self.client_id))
            if settings.dp_sgd:
                if not hooks.plain:
                    raise ConfigError("client.dp_sgd runs plain local steps (FedAvg); this algorithm changes them "
                                      "(FedProx's proximal term, SCAFFOLD's correction), which Opacus's accounting does not cover")
                from cohort.client.dpsgd import train_private

                g = torch.Generator().manual_seed(torch_seed(seed, round_, Stage.SHUFFLE, self.client_id))
                mean_loss, steps, facts = train_private(self.model, self.x, self.y, LOSSES[self.loss], settings, g,
                                                        make_optimizer)
            else:
                shuffle = rng(seed, round_, Stage.SHUFFLE, self.client_id)
                mean_loss, steps = train_epochs(self.model, self.x, self.y, LOSSES[self.loss], settings, shuffle, hooks,
                                                  arrays if hooks.anchor is None else hooks.anchor)
        new = self.model.state_dict()
        delta = {name: np.subtract(t.numpy(), arrays[name]) for name, t in new.items()}
        if settings.ldp:  # local DP: clipped and noised before it leaves this client
            from cohort.client.ldp import privatize

            delta, ldp_facts = privatize(delta, settings.ldp_clip, settings.ldp_noise_multiplier, settings.ldp_delta)
            facts = {**facts, **ldp_facts}
        return Trained(delta, len(self.x), steps, settings.lr, {"train_loss": mean_loss}, facts)

    def gradient(self, arrays: NamedArrays, config: Config) -> Trained:
        settings = self.settings.override(config)
        if settings.dp_sgd:
            raise ConfigError("client.dp_sgd is for local training; FedSGD's full-batch gradient is not DP-SGD: use fedavg")
        if settings.ldp:  # local DP noises a training update; a raw gradient must not leave in its place
            raise ConfigError("client.ldp noises local training's update; FedSGD's full-batch gradient would leave this "
                              "client without it: use fedavg, or central DP ([privacy] mode = 'central')")
        round_, seed = self._streams(config)
        load_arrays(self.model, arrays)
        with torch.random.fork_rng(devices=[]):
            seed_torch(torch_seed(seed, round_, Stage.TORCH, self.client_id))
            grads, mean_loss = full_gradient(self.model, self.x, self.y, LOSSES[self.loss], settings.batch_size)
        # entries without a gradient (buffers) do not move
        delta = {name: grads[name].numpy() if name in grads else np.zeros_like(a) for name, a in arrays.items()}
        return Trained(delta, len(self.x), 1, settings.lr, {"train_loss": mean_loss})

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        self.require_test()
        load_arrays(self.model, arrays)
        loss, n, metrics = evaluate_model(self.model, *self.test, self.loss)
        return EvaluateResult(loss, n, metrics)


def _check_tensors(x: object, y: object, loss: str, what: str, allow_empty: bool = False) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise DataError(f"TorchClient {what}: {name} is a {type(t).__name__}; expected a torch.Tensor "
                            "(convert NumPy data with cohort.client.torch.to_tensors(x, y))")
    if loss == "cross_entropy" and y.dtype != torch.int64:
        raise DataError(f"TorchClient {what}: labels have dtype {y.dtype}; the cross-entropy loss expects class "
                        "indices as torch.int64 (use y.long(), or loss='mse' for real-valued targets)")
    if loss == "mse" and not y.dtype.is_floating_point:
        raise DataError(f"TorchClient {what}: targets have dtype {y.dtype}; the mse loss expects floats (use y.float())")
    if not x.dtype.is_floating_point:
        raise DataError(f"TorchClient {what}: features have dtype {x.dtype}; expected floats (use x.float())")


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


class LazyTorchClients(TorchClientFactory):
    """The ``client_fn`` of a generated federation (``source.split(k)`` gives client k's training and
    held-out examples on demand, e.g. :class:`cohort.data.synthetic.SyntheticFederation`): nothing is
    stored per client, so the registered population costs no memory."""

    def __init__(self, model_fn: Callable[[], torch.nn.Module], source, *, settings: TrainSettings = TrainSettings(),
                 seed: int = 0, loss: str = "cross_entropy") -> None:
        self.model_fn, self.source, self.settings, self.seed, self.loss = model_fn, source, settings, seed, loss
        self._model = None

    def __len__(self) -> int:
        return self.source.num_clients

    def __call__(self, client_id: int) -> TorchClient:
        (x, y), test = self.source.split(int(client_id))
        held = to_tensors(*test) if len(test[0]) else None
        return TorchClient(self.model, *to_tensors(x, y), test=held, settings=self.settings, loss=self.loss,
                           client_id=client_id, seed=self.seed)


class TorchEvaluator:
    """Centralized evaluation on a server-side test set: ``evaluator(arrays) -> metrics``."""

    def __init__(self, model_fn: Callable[[], torch.nn.Module], dataset, batch_size: int | None = None) -> None:
        self.model = model_fn()
        self.cut: tuple[str, np.ndarray, np.ndarray] | None = None  # (first weight, used features, the others): _cut
        stack = DenseStack.of(self.model) if len(dataset.x) else None
        if stack is not None and not stack.fits(dataset.x, dataset.y, loss_for_task(dataset.task)):
            stack = None  # rows the stack cannot read: the model says so when it evaluates
        rows = np.asarray(dataset.x).reshape(len(dataset.x), -1) if stack is not None else None
        columns = used_columns(rows) if stack is not None else None
        if columns is not None:
            first = stack.layers[0][0]
            self.model, self.cut = _cut(self.model, first, len(columns)), (first, columns, left_out(columns, rows.shape[1]))
            self.x, self.y = to_tensors(np.take(rows, columns, axis=1), dataset.y, dataset.x_scale)
        else:
            self.x, self.y = to_tensors(dataset.x, dataset.y, dataset.x_scale)
        if takes_channels_last(self.model, self.x, training=False):  # oneDNN's fast layout here: mnist_cnn's
            self.model.to(memory_format=torch.channels_last)  # test set in 2.5x less time; for good: it only evaluates
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.loss, self.batch_size = loss_for_task(dataset.task), batch_size

    def __call__(self, arrays: NamedArrays) -> dict[str, float]:
        if self.cut is not None:
            weight, columns, outside = self.cut
            w = arrays[weight]
            cut = np.take(w, columns, axis=1)
            broken = ~np.isfinite(w[:, outside]).all(axis=1)  # 0 × inf is NaN: such a unit is NaN on every row
            cut[broken, 0] = np.nan
            arrays = {**arrays, weight: cut}
        load_arrays(self.model, arrays)
        loss, n, metrics = evaluate_model(self.model, self.x, self.y, self.loss, self.batch_size)
        return {"loss": loss, **metrics}


def _cut(model: torch.nn.Module, weight: str, features: int) -> torch.nn.Module:
    """A dense stack whose first Linear (``weight``) takes only ``features`` inputs: evaluated on the test
    rows cut to the features some row uses (``used_columns``), it gives what the whole model gives on the
    whole rows, as the features left out are zero in every row; the products are 15% smaller on MNIST's
    test set, whose border is blank in all 10,000 images."""
    cut = copy.deepcopy(model)
    name = weight.rsplit(".", 1)[0]
    first = cut.get_submodule(name)
    cut._modules[name] = torch.nn.Linear(features, first.out_features, bias=first.bias is not None, dtype=first.weight.dtype)
    return cut


def initial_arrays(model_fn: Callable[[], torch.nn.Module], seed: int) -> NamedArrays:
    """The global arrays of round 0: the model's own initialisation under the run seed."""
    with torch.random.fork_rng(devices=[]):
        seed_torch(torch_seed(seed, 0, Stage.INIT))
        return from_torch(model_fn().state_dict())


def _build_model(name: str, factory, feature_shape: tuple[int, ...], outputs: int, example: Any) -> Callable[[], torch.nn.Module]:
    from cohort.models import check_fits, model_factory

    model_fn = factory if factory is not None else model_factory(name, feature_shape, outputs)
    if factory is not None:
        built = factory()
        if not isinstance(built, torch.nn.Module):
            raise ConfigError(f"model.factory {factory.spec!r} returned a {type(built).__name__}; the torch framework "
                              "needs a torch.nn.Module")
    x, _ = to_tensors(example.x[:1], example.y[:1], example.x_scale)
    check_fits(model_fn, x[0], outputs, factory.spec if factory is not None else name)
    return model_fn


def _client_fn(model_fn, train, partition, holdout, settings: TrainSettings, seed: int) -> TorchClientFactory:
    source = getattr(partition, "federation", None)
    if source is not None:  # a generated federation: clients made on demand
        return LazyTorchClients(model_fn, source, settings=settings, seed=seed, loss=loss_for_task(train.task))
    return TorchClientFactory(model_fn, train, partition, holdout, settings=settings, seed=seed)


def save_torch_model(arrays: NamedArrays, folder: Path) -> Path:
    """``model.pt``: the arrays as a torch state_dict, for ``torch.load``."""
    import os

    from cohort.core.arrays import to_torch

    path, tmp = Path(folder) / "model.pt", Path(folder) / "model.pt.tmp"
    torch.save({k: v.clone() for k, v in to_torch(arrays).items()}, tmp)
    os.replace(tmp, path)
    return path


def _framework():
    from cohort.frameworks import Framework
    from cohort.models import MODELS

    return Framework("torch", tuple(MODELS), _build_model, _client_fn, TorchEvaluator, initial_arrays, save_torch_model)


FRAMEWORK = _framework()
