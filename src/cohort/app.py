"""One Python module, both ways: an :class:`App` declares what the server does and what a client does,
and the same object runs under ``cohort run --app module:app`` (any simulation backend) and under
``cohort server --app module:app`` with ``cohort client --app module:app`` processes.

What stays in TOML (or in the app's own ``config``) is what cohort already knows how to do: the
algorithm and its protections, rounds, sampling, deadlines, the backend. What the app adds is Python:
the initial arrays, the clients, an evaluation function, per-round config records and metric
aggregation. A TOML and an app combine: whatever the app leaves out (no ``client``: the config's data
and model; no ``evaluate``: the config's test set, if the config has data) comes from the config.

A server that runs an app with its own clients loads no dataset: it needs the initial arrays, and its
evaluation is the app's function (or none).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from cohort.algorithms import Algorithm
from cohort.channel.base import SimulationChannel
from cohort.client.context import APP, ClientApp, Context, check_record
from cohort.config import RunConfig, load_config
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError
from cohort.core.limits import MAX_MODEL_ABS
from cohort.server.loop import LoopSettings, RoundEvaluate
from cohort.server.state import ServerState, initial_state

__all__ = ["App", "AppExperiment", "ClientApp", "Context", "ServerContext", "build_app", "load_app"]


@dataclass(frozen=True)
class ServerContext:
    """What the server app's functions are told."""

    round: int  # the round about to run (fit_config), or just finished (evaluate; 0: the initial model)
    settings: Mapping[str, Any]  # the [app] table
    seed: int  # the run seed (public: it is in every client's config)


@dataclass(frozen=True)
class App:
    """A federated app. Every field is optional; what it leaves out comes from the run's config.

    Server side:
      - ``arrays``: the initial model, as named arrays or a function ``settings -> arrays``;
      - ``evaluate(arrays, context) -> metrics``: the server's own evaluation (``context.round`` 0 is
        the initial model, evaluated when ``evaluate.initial = true``);
      - ``fit_config(context)`` / ``evaluate_config(context)``: a record (str -> number, bool or str)
        every client of that round receives as ``context.config``;
      - ``aggregate_fit_metrics`` / ``aggregate_evaluate_metrics``: ``[(num_examples, metrics), ...] ->
        metrics``, replacing the example-weighted mean of the clients' metrics;
      - ``config``: defaults for any setting, as a TOML file would hold them (``{"rounds": 3,
        "server": {"algorithm": "fedprox"}, "app": {"lr": 0.05}}``); a TOML file and ``--set`` lie
        above them. Stop criteria are settings too (``rounds``, ``evaluate.target``).
    Client side:
      - ``client(context) -> Client | Trainer``: a client of this task, built from its context
        (``context.settings``, ``context.config``, ``context.state``, which outlives the task).
    """

    client: Callable[[Context], Any] | None = None
    arrays: NamedArrays | Callable[[Mapping[str, Any]], NamedArrays] | None = None
    evaluate: Callable[[NamedArrays, ServerContext], Mapping[str, float]] | None = None
    fit_config: Callable[[ServerContext], Mapping[str, Any]] | None = None
    evaluate_config: Callable[[ServerContext], Mapping[str, Any]] | None = None
    aggregate_fit_metrics: Callable[[list[tuple[int, Mapping[str, float]]]], Mapping[str, float]] | None = None
    aggregate_evaluate_metrics: Callable[[list[tuple[int, Mapping[str, float]]]], Mapping[str, float]] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("client", "evaluate", "fit_config", "evaluate_config", "aggregate_fit_metrics",
                     "aggregate_evaluate_metrics"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigError(f"App({name}=...) is a {type(value).__name__}; expected a function")
        if self.arrays is not None and not callable(self.arrays) and not isinstance(self.arrays, Mapping):
            raise ConfigError(f"App(arrays=...) is a {type(self.arrays).__name__}; expected named arrays (a dict of "
                              "numpy arrays) or a function settings -> arrays")
        if not isinstance(self.config, Mapping):
            raise ConfigError(f"App(config=...) is a {type(self.config).__name__}; expected a table of settings")

    def load_config(self, path: str | None = None, overrides: list[str] = ()) -> RunConfig:
        """The run's config: the app's own defaults, under ``path``'s, under ``overrides``. A setting of
        ``[app]`` the app gives a default keeps that default's type (an integer may stand for a number)."""
        defaults = _nested(self.config)
        config = load_config(path, list(overrides), defaults=defaults)
        for key, default in (defaults.get(APP) or {}).items():
            value = config.app.get(key)
            if not _same_kind(value, default):
                raise ConfigError(f"app.{key} is {value!r}; the app's default is {default!r}, so expected "
                                  f"{_kind(default)} (e.g. --set app.{key}={_example(default)})")
            if isinstance(default, float):
                config.app[key] = float(value)  # typed as the app declared it
        return config

    def client_app(self, name: str = "") -> ClientApp:
        if self.client is None:
            raise ConfigError("this app has no client (App(client=...)): give the clients' config instead "
                              "(cohort client --config CONFIG.toml)")
        return ClientApp(self.client, name)

    def initial_arrays(self, settings: Mapping[str, Any]) -> NamedArrays:
        found = self.arrays(MappingProxyType(dict(settings))) if callable(self.arrays) else self.arrays
        return check_arrays(found)


def _kind(v: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


def _example(v: Any) -> str:
    return {bool: "true", int: "3", float: "0.5", str: '"text"', list: "[1, 2]"}.get(type(v), "...")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(value) is type(default)


def _nested(flat_or_nested: Mapping[str, Any]) -> dict[str, Any]:
    """The app's config as nested tables; dotted keys ("server.algorithm") are accepted too."""
    out: dict[str, Any] = {}
    for key, value in flat_or_nested.items():
        *parents, last = str(key).split(".") if key != APP else [key]
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = _nested(value) if isinstance(value, Mapping) and key != APP else value
    return out


def check_arrays(arrays: Any) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping) or not arrays:
        raise ConfigError(f"the app's initial arrays are a {type(arrays).__name__}; expected named arrays, a non-empty "
                          "dict of name -> numpy array (cohort.from_torch(model.state_dict()))")
    out = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"the app's initial arrays have the name {name!r}; expected non-empty strings")
        a = np.asarray(a)
        if a.dtype.kind != "f" or not np.all(np.isfinite(a)) or (a.size and np.max(np.abs(a)) > MAX_MODEL_ABS):
            raise ConfigError(f"the app's initial array {name!r} is {a.dtype} with shape {a.shape}; expected finite "
                              f"floats of at most {MAX_MODEL_ABS:g} in absolute value")
        out[name] = a
    return out


def load_app(spec: str) -> App:
    """The :class:`App` named ``module:attribute`` (the module found from the working directory too)."""
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"--app is {spec!r}; expected module:attribute, e.g. my_app:app")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        found = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError(f"--app {spec!r}: cannot import {module!r} ({e}); run from the folder that holds it, or "
                          "put it on PYTHONPATH") from e
    except AttributeError as e:
        raise ConfigError(f"--app {spec!r}: module {module!r} has no {attr!r}") from e
    if isinstance(found, App):
        return found
    if callable(found):  # a bare client_fn(client_id), as cohort client --app has always taken
        return App(client=_ById(found))
    raise ConfigError(f"--app {spec!r} is a {type(found).__name__}; expected a cohort.App or a function client_id -> client")


@dataclass(frozen=True)
class _ById:
    """A plain ``client_fn(client_id)`` as an app's client (it ignores the rest of the context)."""

    fn: Callable[[int], Any]

    def __call__(self, context: Context) -> Any:
        return self.fn(context.client_id)


class _Collected:
    """The app's own aggregation of the clients' metrics: collects ``(num_examples, metrics)``, then asks it."""

    def __init__(self, fn: Callable, what: str) -> None:
        self.fn, self.what, self.pairs = fn, what, []

    def add(self, metrics: Mapping[str, Any], weight: float) -> None:
        if isinstance(metrics, Mapping):
            self.pairs.append((int(weight), dict(metrics)))

    def result(self) -> dict[str, float]:
        out = self.fn(list(self.pairs))
        if not isinstance(out, Mapping):
            raise ConfigError(f"{self.what} returned a {type(out).__name__}; expected a dict of metric -> number")
        return {str(k): float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass(frozen=True)
class AppExperiment:
    """A run of an app: what :func:`cohort.experiment.run` needs, built from the app and the config,
    without loading any dataset unless the app leaves the clients (or the evaluation) to the config."""

    config: RunConfig
    app: App
    algorithm: Algorithm
    settings: LoopSettings
    num_clients: int
    cohort_size: int
    base: Any = None  # the config's own experiment, for what the app leaves to it (its clients, its test set)
    client_names: list[str] | None = None
    native_save: Callable | None = None

    def server_context(self, r: int) -> ServerContext:
        return ServerContext(r, MappingProxyType(dict(self.config.app)), self.config.seed)

    def client_fn(self) -> Callable:
        return self.app.client_app() if self.app.client is not None else self.base.client_fn()

    def channel(self) -> SimulationChannel:
        from cohort.experiment import simulation_channel

        return simulation_channel(self.client_fn(), self.algorithm, self.config)

    def evaluator(self) -> Callable | None:
        from cohort.experiment import server_threads

        if self.app.evaluate is not None:
            fn = self.app.evaluate
            return server_threads(RoundEvaluate(lambda arrays, r: fn(arrays, self.server_context(r))), self.config)
        return self.base.evaluator() if self.base is not None else None

    @property
    def server_test_set(self) -> bool:
        """Whether the server evaluates on its own: the app's evaluate, or the config's test set."""
        return self.app.evaluate is not None or (self.base is not None and self.base.server_test_set)

    def initial_state(self) -> ServerState:
        if self.app.arrays is None:
            return self.base.initial_state()
        return initial_state(self.algorithm, self.app.initial_arrays(self.config.app), self.config.seed)

    def reported(self) -> list[str] | None:
        """The metrics the records hold; None when the app's own evaluation names them (known once it ran)."""
        if self.app.evaluate is not None:
            return None
        return self.base.reported() if self.base is not None else ["train_loss"]

    def example_counts(self) -> np.ndarray | None:
        return self.base.example_counts() if self.base is not None and self.app.client is None else None

    def describe_clients(self) -> str:
        if self.app.client is None:
            return self.base.describe_clients()
        return (f"{self.num_clients} clients of the app\nexamples per client: the app's clients hold their own data\n"
                "labels per client: not known to the server")


def build_app(config: RunConfig, app: App, *, deployed_clients: int | None = None) -> AppExperiment:
    """The run of ``app`` under ``config``, checked before any training. ``deployed_clients``: a deployed
    server's clients (the ones it waits for), which then stand for ``data.num_clients``."""
    from cohort.experiment import build
    from cohort.recipe import check_client_privacy, loop_settings, make_algorithm
    from cohort.server.loop import check_protections

    base = build(config) if app.client is None else None  # the config's data and model serve the clients the app leaves out
    if app.client is not None and app.arrays is None:
        raise ConfigError("the app has clients (App(client=...)) but no initial model: give App(arrays=...), the named "
                          "arrays its clients train (cohort.from_torch(Net().state_dict()))")
    if config.attack.kind != "none" and app.client is not None:
        raise ConfigError("attack.kind simulates attackers among the config's own clients; an app's clients are its "
                          "own: set attack.kind = 'none'")
    num_clients = deployed_clients or (base.num_clients if base is not None else config.data.num_clients)
    settings = loop_settings(config)
    secure = config.secagg.mode != "none"
    if secure and (app.aggregate_fit_metrics or app.aggregate_evaluate_metrics):
        raise ConfigError("secure aggregation: the server sees only the sums of the clients' metrics, so the app's "
                          "aggregate_fit_metrics / aggregate_evaluate_metrics cannot see them one by one; drop them or "
                          "set secagg.mode = 'none'")
    experiment = AppExperiment(config, app, make_algorithm(config), settings, num_clients, 0, base,
                               base.client_names if base is not None and app.client is None else None,
                               base.native_save if base is not None and app.arrays is None else None)
    settings = _with_app(settings, experiment)
    size = settings.check(num_clients, experiment.reported())
    check_client_privacy(config, experiment.algorithm)
    check_protections(experiment.algorithm, settings, size)
    experiment.algorithm.check_cohort(size)
    return replace(experiment, settings=settings, cohort_size=size)


def _with_app(settings: LoopSettings, experiment: AppExperiment) -> LoopSettings:
    """The loop's settings with the app's records on every task and its metric aggregation."""
    app, config = experiment.app, experiment.config
    app_settings = dict(config.app)
    makers = {"fit": app.fit_config, "evaluate": app.evaluate_config}

    def task_config(task: str, r: int) -> dict[str, Any]:
        maker = makers.get(task)
        record = check_record(maker(experiment.server_context(r)), f"the app's {task}_config") if maker else {}
        return {APP: {"settings": app_settings, "config": record}}

    means = {task: (lambda fn=fn, task=task: _Collected(fn, f"the app's aggregate_{task}_metrics"))
             for task, fn in (("fit", app.aggregate_fit_metrics), ("evaluate", app.aggregate_evaluate_metrics)) if fn}
    return replace(settings, task_config=task_config, metrics=means or None)
