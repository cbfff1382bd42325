"""Keras 3 clients on the torch backend (no TensorFlow needed): the user's own compiled model.

The model comes from ``[model] factory`` (``module:function`` returning a compiled ``keras.Model``, called
with ``(input_shape, outputs)`` if it takes them). Its weights travel as named arrays keyed by variable
path (``sequential/dense/kernel``); every build starts from a cleared Keras session, so the paths are the
same in the server, in every worker and in every client process. Local training is the model's own
``fit`` with its compiled optimizer, loss and metrics; ``[client] epochs`` and ``batch_size`` drive it
(``lr``, ``optimizer`` and ``momentum`` are the compiled model's, not ``[client]``'s). The optimizer
starts every round afresh (its variables are restored to their values before the first step), as a
fresh ``torch.optim`` does in the torch client. Each epoch goes through the client's examples in an order
drawn from (seed, round, client), as in the torch client; dropout is seeded from the same through
``keras.utils.set_random_seed``.

As in the torch adapter, one model per process is reused by every client that process runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from cohort.core.errors import ConfigError, DataError

_BACKEND = os.environ.setdefault("KERAS_BACKEND", "torch")  # must be set before keras is first imported
if _BACKEND != "torch":
    raise ConfigError(f"model.framework = 'keras' runs Keras 3 on the torch backend; KERAS_BACKEND is {_BACKEND!r}: "
                      "unset it or set KERAS_BACKEND=torch")
try:
    import keras
except ImportError as e:  # the registry turns this into "pip install 'cohort[keras]'"
    raise ImportError(str(e), name="keras") from e
if keras.backend.backend() != "torch":
    raise ConfigError(f"keras was imported with the {keras.backend.backend()!r} backend before cohort; "
                      "model.framework = 'keras' needs KERAS_BACKEND=torch set before keras is imported")

from cohort.client.base import FrameworkClient, Hooks, Trained  # noqa: E402
from cohort.client.settings import TrainSettings  # noqa: E402
from cohort.core.arrays import NamedArrays  # noqa: E402
from cohort.core.seeding import Stage, rng, torch_seed  # noqa: E402
from cohort.core.types import Config, EvaluateResult  # noqa: E402


def _seed32(seed: int, round_: int, stage: int, client: int = 0) -> int:
    return torch_seed(seed, round_, stage, client) % 2**32


def weights_of(model: "keras.Model") -> NamedArrays:
    """The model's variables (trainable and not) as named arrays, by variable path."""
    out: NamedArrays = {}
    for v in model.weights:
        if v.path in out:
            raise ConfigError(f"the Keras model has two variables at path {v.path!r}; give its layers distinct names")
        out[v.path] = np.array(keras.ops.convert_to_numpy(v.value))
    return out


def set_weights(model: "keras.Model", arrays: NamedArrays) -> None:
    """Assign named arrays to the model's variables; a mismatch names the offending paths."""
    paths = [v.path for v in model.weights]
    if set(paths) != set(arrays):
        missing, extra = sorted(set(paths) - set(arrays)), sorted(set(arrays) - set(paths))
        raise ConfigError(f"the arrays do not fit the Keras model: missing {missing[:5]}, unexpected {extra[:5]}")
    for v in model.weights:
        a = arrays[v.path]
        if tuple(a.shape) != tuple(v.shape):
            raise ConfigError(f"array {v.path!r} has shape {tuple(a.shape)}; the Keras model's variable has {tuple(v.shape)}")
        v.assign(a)


class KerasModelBuilder:
    """The picklable ``model_fn``: the user's factory in a cleared Keras session, its result checked."""

    def __init__(self, factory) -> None:
        self.factory = factory

    def __call__(self, seed: int | None = None) -> "keras.Model":
        keras.utils.clear_session()  # resets Keras's automatic names: the same variable paths on every build
        if seed is not None:
            keras.utils.set_random_seed(seed)
        model = self.factory()
        if not isinstance(model, keras.Model):
            raise ConfigError(f"model.factory {self.factory.spec!r} returned a {type(model).__name__}; the keras "
                              "framework needs a keras.Model")
        if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
            raise ConfigError(f"model.factory {self.factory.spec!r} returned a Keras model that is not compiled; "
                              "call model.compile(optimizer=..., loss=..., metrics=[...]) in it")
        return model


def _optimizer_start(model: "keras.Model") -> list[np.ndarray]:
    """The optimizer's variables before its first step (building them if need be)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.optimizer.variables]


class KerasClient(FrameworkClient):
    """A client training a compiled Keras model on its own examples: a :class:`cohort.Trainer` for the
    algorithms that keep local training plain (FedAvg, FedAvgM, the server optimizers, FedPer, FedBuff)."""

    def __init__(self, model, x: np.ndarray, y: np.ndarray, *, test: tuple[np.ndarray, np.ndarray] | None = None,
                 settings: TrainSettings = TrainSettings(), client_id: int = 0, seed: int = 0,
                 optimizer_start: list[np.ndarray] | None = None) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"client {client_id} has {len(x)} examples and {len(y)} labels; expected the same count, at least 1")
        self.model, self.x, self.y, self.test = model, x, y, test
        self.settings, self.client_id, self.seed = settings, client_id, seed
        self.optimizer_start = optimizer_start if optimizer_start is not None else _optimizer_start(model)

    def train(self, arrays: NamedArrays, config: Config, hooks: Hooks = Hooks()) -> Trained:
        if not hooks.plain:
            raise ConfigError("the keras client trains with the model's own fit(); this algorithm changes local "
                              "training (FedProx's proximal term, SCAFFOLD's correction, Ditto's pull), which needs "
                              "model.framework = 'torch'")
        s = self.settings.override(config)
        if s.dp_sgd or s.ldp:
            raise ConfigError("client.dp_sgd and client.ldp are built into the torch client; the keras client has neither")
        set_weights(self.model, arrays)
        for v, start in zip(self.model.optimizer.variables, self.optimizer_start):
            v.assign(start)
        n = len(self.x)
        batch = n if s.batch_size == 0 else min(s.batch_size, n)
        seed, round_ = int(config.get("seed", self.seed)), int(config.get("round", 0))
        keras.utils.set_random_seed(_seed32(seed, round_, Stage.TORCH, self.client_id))  # dropout and other layers' draws
        order, losses = rng(seed, round_, Stage.SHUFFLE, self.client_id), []
        for _ in range(s.epochs):  # our own seeded order: Keras's shuffle draws depend on what ran before in the process
            perm = order.permutation(n)
            history = self.model.fit(self.x[perm], self.y[perm], epochs=1, batch_size=batch, shuffle=False, verbose=0)
            losses += history.history.get("loss", [])
        new = weights_of(self.model)
        delta = {k: np.subtract(new[k], arrays[k]).astype(new[k].dtype, copy=False) for k in new}
        metrics = {"train_loss": float(np.mean(losses))} if losses else {}
        return Trained(delta, n, s.epochs * math.ceil(n / batch), 0.0, metrics)

    def gradient(self, arrays: NamedArrays, config: Config) -> Trained:
        raise ConfigError("FedSGD needs full-batch gradients, which the keras client does not compute; use "
                          "server.algorithm = 'fedavg' or model.framework = 'torch'")

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        self.require_test()
        set_weights(self.model, arrays)
        loss, metrics = _evaluate(self.model, *self.test)
        return EvaluateResult(loss, len(self.test[0]), metrics)


def _evaluate(model, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
    result = model.evaluate(x, y, batch_size=1024, verbose=0, return_dict=True)
    metrics = {k: float(v) for k, v in result.items() if np.ndim(v) == 0}
    return metrics.pop("loss"), metrics


def _features(ds, idx) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ds.x[idx], dtype=np.float32)
    return (x * np.float32(ds.x_scale) if ds.x_scale != 1.0 else x), np.asarray(ds.y[idx])


class KerasClientFactory:
    """The ``client_fn`` of a simulation: client ``i`` trains on ``dataset[train[i]]`` with the one
    model of this process (left out of pickles, so each worker builds its own)."""

    def __init__(self, model_fn: Callable[..., Any], dataset, train, test=None, *,
                 settings: TrainSettings = TrainSettings(), seed: int = 0) -> None:
        self.model_fn, self.dataset, self.train, self.test = model_fn, dataset, train, test
        self.settings, self.seed = settings, seed
        self._model = self._start = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None, "_start": None}

    def __len__(self) -> int:
        return len(self.train)

    def __call__(self, client_id: int) -> KerasClient:
        if self._model is None:
            self._model = self.model_fn()
            self._start = _optimizer_start(self._model)
        x, y = _features(self.dataset, self.train[client_id])
        test = _features(self.dataset, self.test[client_id]) if self.test is not None else None
        return KerasClient(self._model, x, y, test=test, settings=self.settings, client_id=client_id, seed=self.seed,
                           optimizer_start=self._start)


class KerasEvaluator:
    """Centralized evaluation on the server's test set with the model's compiled loss and metrics."""

    def __init__(self, model_fn: Callable[..., Any], dataset) -> None:
        self.model = model_fn()
        self.x, self.y = _features(dataset, np.arange(len(dataset)))

    def __call__(self, arrays: NamedArrays) -> dict[str, float]:
        set_weights(self.model, arrays)
        loss, metrics = _evaluate(self.model, self.x, self.y)
        return {"loss": loss, **metrics}


def initial_arrays(model_fn: Callable[..., Any], seed: int) -> NamedArrays:
    """The global arrays of round 0: the model's own initialisation under the run seed."""
    return weights_of(model_fn(_seed32(seed, 0, Stage.INIT)))


def _build_model(name: str, factory, feature_shape: tuple[int, ...], outputs: int, example: Any) -> KerasModelBuilder:
    if factory is None:
        raise ConfigError("model.framework = 'keras' builds your own compiled model: set model.factory = "
                          "'module:function' (see examples/keras_models.py)")
    builder = KerasModelBuilder(factory)
    model = builder()
    x, _ = _features(example, np.arange(1))
    try:
        out = keras.ops.convert_to_numpy(model(x, training=False))
    except Exception as e:  # the user's model: any framework error means it does not fit the data
        raise ConfigError(f"the Keras model does not fit examples of shape {tuple(x.shape[1:])}: {type(e).__name__}: {e}") from e
    binary = example.task == "classification" and outputs == 2 and out.shape[1:] == (1,)  # one sigmoid unit
    if out.shape[1:] != (outputs,) and not binary:
        raise ConfigError(f"the Keras model gives outputs of shape {tuple(out.shape[1:])}; the data needs ({outputs},)"
                          + (" or (1,) with a sigmoid" if example.task == "classification" and outputs == 2 else ""))
    return builder


def _client_fn(model_fn, train, partition, holdout, settings: TrainSettings, seed: int) -> KerasClientFactory:
    return KerasClientFactory(model_fn, train, partition, holdout, settings=settings, seed=seed)


def _framework():
    from cohort.frameworks import Framework

    return Framework("keras", (), _build_model, _client_fn, KerasEvaluator, initial_arrays, lambda arrays, folder: None,
                     algorithms=("fedavg", "fedper"))


FRAMEWORK = _framework()
