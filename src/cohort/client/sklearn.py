"""scikit-learn clients: linear models that learn incrementally, federated through ``coef_`` and ``intercept_``.

- ``model.name = "sgd_classifier"`` (``SGDClassifier(loss="log_loss")``), ``"sgd_regressor"`` and
  ``"logistic_regression"`` (``LogisticRegression(warm_start=True)``), with ``[client] lr`` as the SGD
  step (``eta0``, constant) and ``weight_decay`` as ``alpha``; or your own unfitted estimator from
  ``model.factory`` (any ``SGDClassifier``, ``SGDRegressor``, ``Perceptron``, ``PassiveAggressive*`` or
  ``LogisticRegression``), trained with its own parameters.
- The arrays' shapes come from the data's feature count and the classes declared up front (every class
  of the dataset), never from what one client holds, so a client that lacks a class still sends arrays
  every other client agrees with: ``coef_`` is (1, d) for two classes, (C, d) for more, (d,) for
  regression.
- A round is ``[client] epochs`` passes of ``partial_fit`` over the client's examples in a seeded order
  (SGD models), or ``fit`` from the received coefficients with ``max_iter = epochs`` (LogisticRegression,
  whose solver needs every class on the client: a client without one fails that round, saying so).
- Metrics come from scikit-learn's own scorers: accuracy and macro F1, or R² and mean absolute error; the
  loss is the log loss (or the hinge loss for estimators without probabilities), or the mean squared error.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor
from sklearn.linear_model._stochastic_gradient import BaseSGD
from sklearn.metrics import get_scorer, hinge_loss, log_loss, mean_squared_error

from cohort.client.base import FrameworkClient, Hooks, Trained
from cohort.client.settings import TrainSettings
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng
from cohort.core.types import Config, EvaluateResult

MODELS = ("sgd_classifier", "sgd_regressor", "logistic_regression")
SCORERS = {"classification": ("accuracy", "f1_macro"), "regression": ("r2", "neg_mean_absolute_error")}


class SklearnModel:
    """The picklable ``model_fn``: an unfitted estimator and the shapes every client agrees on."""

    def __init__(self, name: str, factory, task: str, num_features: int, num_classes: int) -> None:
        self.name, self.factory, self.task = name, factory, task
        self.num_features, self.num_classes = num_features, num_classes

    @property
    def builtin(self) -> bool:
        return self.factory is None

    def __call__(self) -> BaseEstimator:
        if self.factory is None:
            # shuffle=False: each epoch already goes through the examples in the client's seeded order
            return {"sgd_classifier": lambda: SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01, alpha=0.0,
                                                            shuffle=False),
                    "sgd_regressor": lambda: SGDRegressor(learning_rate="constant", eta0=0.01, alpha=0.0, shuffle=False),
                    "logistic_regression": lambda: LogisticRegression(warm_start=True)}[self.name]()
        est = self.factory()
        if not isinstance(est, (BaseSGD, LogisticRegression)):
            raise ConfigError(f"model.factory {self.factory.spec!r} returned a {type(est).__name__}; the sklearn framework "
                              "federates linear models that learn incrementally: SGDClassifier, SGDRegressor, Perceptron, "
                              "PassiveAggressiveClassifier/Regressor, or LogisticRegression")
        return est

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self.task == "regression":
            return {"coef_": (self.num_features,), "intercept_": (1,)}
        rows = 1 if self.num_classes == 2 else self.num_classes
        return {"coef_": (rows, self.num_features), "intercept_": (rows,)}

    def with_arrays(self, arrays: NamedArrays, settings: TrainSettings | None = None) -> BaseEstimator:
        """A fresh estimator holding ``arrays`` (checked against the agreed shapes)."""
        for name, shape in self.shapes().items():
            if name not in arrays or tuple(np.shape(arrays[name])) != shape:
                raise ConfigError(f"the arrays do not fit the {self.task} model: expected {name} of shape {shape}, got "
                                  f"{tuple(np.shape(arrays[name])) if name in arrays else 'none'}")
        est = clone(self())
        if settings is not None and self.builtin and isinstance(est, BaseSGD):
            est.set_params(eta0=settings.lr, alpha=settings.weight_decay)
        est.coef_ = np.array(arrays["coef_"], dtype=np.float64)
        est.intercept_ = np.array(arrays["intercept_"], dtype=np.float64)
        if self.task == "classification":
            est.classes_ = np.arange(self.num_classes)
        return est


class SklearnClient(FrameworkClient):
    """A client training a linear scikit-learn model on its own examples (a :class:`cohort.Trainer`)."""

    def __init__(self, model: SklearnModel, x: np.ndarray, y: np.ndarray, *, test=None,
                 settings: TrainSettings = TrainSettings(), client_id: int = 0, seed: int = 0) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"client {client_id} has {len(x)} examples and {len(y)} labels; expected the same count, at least 1")
        self.model, self.x, self.y, self.test = model, x, y, test
        self.settings, self.client_id, self.seed = settings, client_id, seed

    def train(self, arrays: NamedArrays, config: Config, hooks: Hooks = Hooks()) -> Trained:
        if not hooks.plain:
            raise ConfigError("the sklearn client trains with the estimator's own partial_fit/fit; this algorithm changes "
                              "local training (a proximal term or a gradient correction), which needs model.framework = 'torch'")
        s = self.settings.override(config)
        est = self.model.with_arrays(arrays, s)
        round_, seed = int(config.get("round", 0)), int(config.get("seed", self.seed))
        if est.get_params().get("random_state", 0) is None:  # the estimator's own draws, seeded for reproducible runs
            est.set_params(random_state=int(rng(seed, round_, Stage.TORCH, self.client_id).integers(2**31 - 1)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations per round: expected
            if isinstance(est, LogisticRegression):
                present = np.unique(self.y)
                if self.model.task == "classification" and len(present) < self.model.num_classes:
                    raise DataError(f"client {self.client_id} holds classes {present.tolist()} of {self.model.num_classes}; "
                                    "LogisticRegression's solver needs every class on each client: use model.name = "
                                    "'sgd_classifier' (or an SGDClassifier from model.factory), which learns with classes absent")
                est.set_params(warm_start=True, max_iter=s.epochs)
                est.fit(self.x, self.y)
            else:
                order = rng(seed, round_, Stage.SHUFFLE, self.client_id)
                classes = {"classes": np.arange(self.model.num_classes)} if self.model.task == "classification" else {}
                for _ in range(s.epochs):
                    perm = order.permutation(len(self.x))
                    est.partial_fit(self.x[perm], self.y[perm], **classes)
        new = {"coef_": est.coef_, "intercept_": np.atleast_1d(est.intercept_)}
        delta = {k: np.asarray(new[k], np.float64) - np.asarray(arrays[k], np.float64) for k in new}
        if not all(np.isfinite(d).all() for d in delta.values()):
            raise FloatingPointError("the estimator's coefficients are not finite after training (lower [client] lr)")
        loss, _ = _score(est, self.x, self.y, self.model.task, metrics=False)
        return Trained(delta, len(self.x), s.epochs * len(self.x), s.lr, {"train_loss": loss})

    def gradient(self, arrays: NamedArrays, config: Config) -> Trained:
        raise ConfigError("FedSGD needs full-batch gradients, which the sklearn client does not compute; use fedavg")

    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        self.require_test()
        loss, metrics = _score(self.model.with_arrays(arrays), *self.test, self.model.task)
        return EvaluateResult(loss, len(self.test[0]), metrics)


def _score(est, x, y, task: str, metrics: bool = True) -> tuple[float, dict[str, float]]:
    """The loss, and scikit-learn's scorers (a scorer that cannot score this data, e.g. F1 of one
    example, is left out rather than failing the client)."""
    if task == "regression":
        loss = float(mean_squared_error(y, est.predict(x)))
    elif hasattr(est, "predict_proba") and getattr(est, "loss", "log_loss") in ("log_loss", "modified_huber"):
        proba = np.clip(est.predict_proba(x), 1e-15, 1.0)
        loss = float(log_loss(y, proba, labels=est.classes_))
    else:
        loss = float(hinge_loss(y, est.decision_function(x), labels=est.classes_))
    out: dict[str, float] = {}
    for name in SCORERS[task] if metrics else ():
        try:
            value = float(get_scorer(name)(est, x, y))
        except ValueError:
            continue
        out["mae" if name == "neg_mean_absolute_error" else name] = -value if name.startswith("neg_") else value
    return loss, out


def _features(ds, idx) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ds.x[idx], dtype=np.float64).reshape(len(idx), -1)
    return (x * ds.x_scale if ds.x_scale != 1.0 else x), np.asarray(ds.y[idx])


class SklearnClientFactory:
    """The ``client_fn`` of a simulation: client ``i`` trains on ``dataset[train[i]]``."""

    def __init__(self, model: SklearnModel, dataset, train, test=None, *, settings: TrainSettings = TrainSettings(),
                 seed: int = 0) -> None:
        self.model, self.dataset, self.train, self.test, self.settings, self.seed = model, dataset, train, test, settings, seed

    def __len__(self) -> int:
        return len(self.train)

    def __call__(self, client_id: int) -> SklearnClient:
        x, y = _features(self.dataset, self.train[client_id])
        test = _features(self.dataset, self.test[client_id]) if self.test is not None else None
        return SklearnClient(self.model, x, y, test=test, settings=self.settings, client_id=client_id, seed=self.seed)


class SklearnEvaluator:
    """Centralized evaluation on the server's test set."""

    def __init__(self, model: SklearnModel, dataset) -> None:
        self.model = model
        self.x, self.y = _features(dataset, np.arange(len(dataset)))

    def __call__(self, arrays: NamedArrays) -> dict[str, float]:
        loss, metrics = _score(self.model.with_arrays(arrays), self.x, self.y, self.model.task)
        return {"loss": loss, **metrics}


def initial_arrays(model: SklearnModel, seed: int) -> NamedArrays:
    """Zeros, as scikit-learn's own linear models start."""
    return {name: np.zeros(shape, np.float64) for name, shape in model.shapes().items()}


def _build_model(name: str, factory, feature_shape: tuple[int, ...], outputs: int, example: Any) -> SklearnModel:
    task = example.task
    model = SklearnModel(name, factory, task, math.prod(feature_shape), outputs if task == "classification" else 1)
    est = model()  # checks the factory's estimator
    if factory is None and (name == "sgd_regressor") != (task == "regression"):
        raise ConfigError(f"model.name = {name!r} does not fit a {task} dataset; use "
                          f"{'sgd_regressor' if task == 'regression' else 'sgd_classifier or logistic_regression'}")
    is_regressor = getattr(est, "_estimator_type", None) == "regressor" or isinstance(est, SGDRegressor)
    if factory is not None and is_regressor != (task == "regression"):
        raise ConfigError(f"model.factory {factory.spec!r} returned a {type(est).__name__}, which does not fit a {task} dataset")
    if task == "classification" and outputs < 2:
        raise ConfigError(f"the dataset declares {outputs} class; a classifier needs at least 2")
    return model


def _client_fn(model, train, partition, holdout, settings: TrainSettings, seed: int) -> SklearnClientFactory:
    return SklearnClientFactory(model, train, partition, holdout, settings=settings, seed=seed)


def _framework():
    from cohort.frameworks import Framework

    return Framework("sklearn", MODELS, _build_model, _client_fn, SklearnEvaluator, initial_arrays, lambda arrays, folder: None,
                     algorithms=("fedavg",))


FRAMEWORK = _framework()
