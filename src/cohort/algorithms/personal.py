"""Personalization: each client ends with a model of its own, kept in its per-client state.

- **FedPer** (Arivazhagan et al. 2019): the model is split into shared *base* layers, averaged as in
  FedAvg, and *personal* layers (by default the last one: the classifier head) that each client
  trains and keeps. Trained personal layers never travel. The server only holds their initial values,
  the ``personal_init`` group, which a client starts from the first time it is sampled; it is sent down
  with the model and never changes. The server's ``model`` group is the shared layers alone, so there is
  no complete global model to test centrally: FedPer is evaluated on each client's own held-out data.
- **Ditto** (Li et al. 2021): the global model is trained exactly as in FedAvg, and beside it each
  client trains a personal model ``v`` on its own data with a proximal term λ/2·‖v − w‖² towards the
  global model ``w`` it received (λ = 0: purely local models; λ → ∞: the global model). ``v`` stays
  in the client's state; only the global model's delta goes up.

Both evaluate per client on held-out local data. The evaluation result carries the personal model's
``personal_loss`` and ``personal_<metric>``; for Ditto its main loss and metrics are the global model's on
the same data, for FedPer (which has no global model) they are the personal model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from cohort.algorithms.base import Needs, Algorithm, ClientHalf, ClientState
from cohort.algorithms.fedavg import model_pipeline
from cohort.client.base import Hooks, Trainer
from cohort.client.settings import MAX_EPOCHS
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError
from cohort.core.types import MODEL, EvaluateResult, Groups, Message, Reply

PERSONAL = "personal"  # a client's own arrays, in its state: FedPer's personal layers, Ditto's model
PERSONAL_INIT = "personal_init"  # FedPer: the personal layers' initial values, sent down, never aggregated


def personal_metrics(result: EvaluateResult) -> dict[str, float]:
    """``result`` as the personal model's metrics: ``personal_loss`` and ``personal_<metric>``."""
    return {"personal_loss": result.loss, **{f"personal_{k}": v for k, v in (result.metrics or {}).items()}}


def _kept(state: ClientState, like: NamedArrays, what: str) -> NamedArrays | None:
    """The client's own arrays from its state if it has them, checked against ``like`` (same names and
    shapes); None before its first round."""
    own = (state or {}).get(PERSONAL)
    if own is None:
        return None
    if set(own) != set(like) or any(np.shape(own[k]) != np.shape(like[k]) for k in like):
        raise ConfigError(f"this client's kept {what} ({sorted(own)}) do not match the model's "
                          f"({sorted(like)}); the model changed since it trained: start the run afresh")
    return own


def _updated(start: NamedArrays, delta: NamedArrays, what: str) -> NamedArrays:
    """``start + delta`` in ``start``'s dtypes; refuses to keep non-finite arrays, which would spoil the
    client's model for good (it keeps its previous one and fails this round)."""
    out = {k: np.asarray(np.add(a, delta[k]), dtype=a.dtype) for k, a in start.items()}
    if not all(np.isfinite(a).all() for a in out.values() if a.dtype.kind == "f"):
        raise FloatingPointError(f"the client's new {what} are not finite (local training diverged); it keeps its previous ones")
    return out


# ---------------------------------------------------------------------------------------------- FedPer

@dataclass(frozen=True)
class FedPerSettings:
    """``[fedper]``: which layers stay on the clients."""

    personal: tuple[str, ...] = ()  # layer names kept personal, e.g. ["4"] or ["head"]; () : the last personal_layers
    personal_layers: int = 1  # with personal = (): this many last layers (by parameter name prefix) stay personal

    def __post_init__(self) -> None:
        if isinstance(self.personal, list):
            object.__setattr__(self, "personal", tuple(self.personal))
        if not (isinstance(self.personal, tuple) and all(isinstance(p, str) and p.strip(". ") for p in self.personal)):
            raise ConfigError(f"fedper.personal is {self.personal!r}; expected a list of layer names, e.g. [\"4\"] "
                              "for the parameters 4.weight and 4.bias")
        if not (isinstance(self.personal_layers, Integral) and not isinstance(self.personal_layers, bool)
                and 1 <= self.personal_layers <= 10_000):
            raise ConfigError(f"fedper.personal_layers is {self.personal_layers!r}; expected an integer >= 1")

    def split(self, model: NamedArrays) -> tuple[NamedArrays, NamedArrays]:
        """(shared, personal) arrays of ``model``; a ConfigError names the layers when the split is empty
        on either side or a named layer does not exist."""
        layers = list(dict.fromkeys(_layer(k) for k in model))
        if self.personal:
            missing = [p for p in self.personal if not any(_in_layer(k, p) for k in model)]
            if missing:
                raise ConfigError(f"fedper.personal names {missing}, which the model does not have; its layers are {layers}")
            personal = {k for k in model if any(_in_layer(k, p) for p in self.personal)}
        else:
            chosen = set(layers[-self.personal_layers:])
            personal = {k for k in model if _layer(k) in chosen}
        shared = {k: a for k, a in model.items() if k not in personal}
        if not shared:
            raise ConfigError(f"FedPer needs at least one shared layer; with fedper.personal = {list(self.personal)} "
                              f"and personal_layers = {self.personal_layers} every layer of the model ({layers}) is "
                              "personal. Keep fewer layers personal, or use a model with more than one layer")
        return shared, {k: model[k] for k in model if k in personal}


def _layer(key: str) -> str:
    """The layer an array belongs to: its name without the last segment (``4.weight`` -> ``4``,
    Keras's ``sequential/dense_1/kernel`` -> ``sequential/dense_1``)."""
    cut = max(key.rfind("."), key.rfind("/"))
    return key[:cut] if cut > 0 else key


def _in_layer(key: str, name: str) -> bool:
    """``name`` is the array's layer, a path above it, or the layer's own last segment (``dense_1``)."""
    name = name.strip("./")
    layer = _layer(key)
    return (key == name or layer == name or key.startswith((name + ".", name + "/"))
            or layer.endswith(("/" + name, "." + name)))


@dataclass(frozen=True)
class PersonalSplit:
    """FedPer's global groups from the initial model: the shared layers and the personal layers' initial values."""

    settings: FedPerSettings

    def __call__(self, model: NamedArrays) -> Groups:
        shared, personal = self.settings.split(model)
        return {MODEL: shared, PERSONAL_INIT: personal}


def whole_model(groups: Groups) -> NamedArrays:
    """The complete model FedPer's groups were split from: the shared layers and the initial personal ones."""
    return {**groups[MODEL], **groups[PERSONAL_INIT]}


class PersonalLayers(ClientHalf):
    """FedPer's client half: trains the shared layers it received with its own personal layers; only
    the shared layers' delta goes back."""

    def _model(self, message: Message, state: ClientState) -> tuple[NamedArrays, NamedArrays]:
        shared, init = message.arrays[MODEL], message.arrays.get(PERSONAL_INIT)
        if init is None or set(init) & set(shared):
            raise ConfigError(f"a FedPer message carries the groups {sorted(message.arrays)}; expected {MODEL!r} and "
                              f"{PERSONAL_INIT!r} with distinct layers (is the server running fedper?)")
        own = _kept(state, init, "personal layers")
        return shared, init if own is None else own

    def fit(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply, ClientState]:
        shared, own = self._model(message, state)
        t = trainer.train({**shared, **own}, message.config, Hooks())
        kept = _updated(own, t.delta, "personal layers")
        return Reply({MODEL: {k: t.delta[k] for k in shared}}, t.num_examples, t.metrics, facts=t.facts), {**(state or {}), PERSONAL: kept}

    def evaluate(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[EvaluateResult, ClientState]:
        shared, own = self._model(message, state)
        r = trainer.evaluate({**shared, **own}, message.config)
        return EvaluateResult(r.loss, r.num_examples, {**(r.metrics or {}), **personal_metrics(r)}), state


def fedper(personal: tuple[str, ...] | list[str] = (), personal_layers: int = 1, server_lr: float = 1.0,
           server_momentum: float = 0.0, weighted: bool = True) -> Algorithm:
    settings = FedPerSettings(personal, personal_layers)
    return Algorithm("fedper", PersonalLayers(), {MODEL: model_pipeline(server_lr, server_momentum, weighted)},
                     groups=PersonalSplit(settings), whole=whole_model,
                     needs=Needs(partial_model="FedPer: the shared layers only; each client keeps its personal layers",
                                 personal=True))


# ----------------------------------------------------------------------------------------------- Ditto

@dataclass(frozen=True)
class DittoSettings:
    """``[ditto]``"""

    lam: float = 0.1  # λ: pull of the personal model towards the global one (0: purely local)
    personal_epochs: int = 0  # local epochs of the personal model each round; 0: client.epochs

    def __post_init__(self) -> None:
        if not (isinstance(self.lam, Real) and not isinstance(self.lam, bool) and 0 <= self.lam < math.inf):
            raise ConfigError(f"ditto.lam is {self.lam!r}; expected a finite number >= 0 (Li et al. try 0.01 to 2)")
        if not (isinstance(self.personal_epochs, Integral) and not isinstance(self.personal_epochs, bool)
                and 0 <= self.personal_epochs <= MAX_EPOCHS):
            raise ConfigError(f"ditto.personal_epochs is {self.personal_epochs!r}; expected an integer from 0 "
                              f"(the same as client.epochs) to {MAX_EPOCHS}")


@dataclass(frozen=True)
class PersonalModel(ClientHalf):
    """Ditto's client half: the global model's local steps (FedAvg's), then the personal model's,
    regularised towards the received global model."""

    lam: float
    personal_epochs: int = 0

    requires = ("train",)

    def fit(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[Reply, ClientState]:
        w = message.arrays[MODEL]
        t = trainer.train(w, message.config, Hooks())
        v = _kept(state, w, "personal model") or w
        config = message.config if not self.personal_epochs else {**message.config, "epochs": self.personal_epochs}
        p = trainer.train(v, config, Hooks(proximal_mu=self.lam, anchor=w))
        metrics = {**(t.metrics or {}), **{f"personal_{k}": m for k, m in (p.metrics or {}).items()}}
        try:
            kept = _updated(v, p.delta, "personal model")
        except FloatingPointError:  # the personal steps diverged (lr·λ too large): keep the last personal model;
            kept = v  # the global model's update is good and still goes up
            metrics["personal_diverged"] = 1.0
        return Reply({MODEL: t.delta}, t.num_examples, metrics, facts=t.facts), {**(state or {}), PERSONAL: kept}

    def evaluate(self, message: Message, trainer: Trainer, state: ClientState) -> tuple[EvaluateResult, ClientState]:
        w = message.arrays[MODEL]
        g = trainer.evaluate(w, message.config)
        own = _kept(state, w, "personal model")
        p = g if own is None else trainer.evaluate(own, message.config)  # not trained yet: its model is the global one
        return EvaluateResult(g.loss, g.num_examples, {**(g.metrics or {}), **personal_metrics(p)}), state


def ditto(lam: float = 0.1, personal_epochs: int = 0, server_lr: float = 1.0, server_momentum: float = 0.0,
          weighted: bool = True) -> Algorithm:
    settings = DittoSettings(lam, personal_epochs)
    return Algorithm("ditto", PersonalModel(float(settings.lam), settings.personal_epochs),
                     {MODEL: model_pipeline(server_lr, server_momentum, weighted)}, needs=Needs(personal=True))
