"""The one place frameworks plug in. The core (config, loop, aggregation, channels) never imports a
framework; an experiment asks this registry for the chosen one, which is imported only then.

A framework provides: a model builder by name (checked against the data), the simulation's
``client_fn``, a server-side evaluator, the initial global arrays, and its own model file.
Keras and scikit-learn register here the same way the torch adapter does.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError


@dataclass(frozen=True)
class Framework:
    name: str
    models: Sequence[str]  # model names it builds (``[model] name``); a user's own come through ``[model] factory``
    # (model name, factory or None, feature shape, outputs, one example of the data) -> a picklable
    # zero-argument model builder; ``factory`` (a :class:`Factory`) wins over the name
    build_model: Callable[[str, "Factory | None", tuple[int, ...], int, Any], Callable[[], Any]]
    # (model_fn, train dataset, partition, holdout partition or None, TrainSettings, seed) -> client_fn
    client_fn: Callable[..., Callable[[int], Any]]
    # (model_fn, test dataset) -> evaluate(arrays) -> metrics
    evaluator: Callable[[Callable[[], Any], Any], Callable[[NamedArrays], dict[str, float]]]
    # (model_fn, seed) -> the global arrays of round 0
    initial_arrays: Callable[[Callable[[], Any], int], NamedArrays]
    # (arrays, folder) -> the framework's own model file, beside model.safetensors
    save_model: Callable[[NamedArrays, Path], Path | None]
    algorithms: Sequence[str] | None = None  # the algorithms its clients can run (None: all)


# name -> "module:attribute" of its Framework, imported on first use
_REGISTRY: dict[str, str | Framework] = {"torch": "cohort.client.torch:FRAMEWORK", "keras": "cohort.client.keras:FRAMEWORK",
                                         "sklearn": "cohort.client.sklearn:FRAMEWORK"}


def register(name: str, framework: str | Framework) -> None:
    """Make ``[model] framework = name`` available: a Framework, or "module:attribute" naming one."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"framework name {name!r} must be a plain identifier")
    _REGISTRY[name] = framework


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Framework:
    if name not in _REGISTRY:
        raise ConfigError(f"model.framework is {name!r}; expected one of {', '.join(names())}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise ConfigError(f"model.framework = {name!r} needs {e.name}, which is not installed: "
                              f"pip install 'cohort[{name}]'") from e
        _REGISTRY[name] = entry
    return entry


def check_factory_spec(spec: str, key: str = "model.factory") -> None:
    """``module:function`` or ``path/to/file.py:function``; raises ConfigError naming ``key`` otherwise."""
    module, sep, attr = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if not (sep and module and attr.isidentifier()
            and (module.endswith(".py") or all(p.isidentifier() for p in module.split(".")))):
        raise ConfigError(f"{key} is {spec!r}; expected 'module:function' (an importable module) or "
                          "'path/to/file.py:function', e.g. 'examples/keras_models.py:binary_classifier'")


@dataclass(frozen=True)
class Factory:
    """A user's model builder named by ``module:function`` or ``file.py:function`` (relative paths from
    the working folder), called as ``function(input_shape, outputs)`` if it takes two arguments, else
    ``function()``. It pickles as its name, so a worker process imports it afresh."""

    spec: str
    input_shape: tuple[int, ...] = ()
    outputs: int = 0

    def __post_init__(self) -> None:
        check_factory_spec(self.spec)

    def function(self) -> Callable[..., Any]:
        module, _, attr = self.spec.rpartition(":")
        if module.endswith(".py"):
            path = Path(module).resolve()
            if not path.is_file():
                raise ConfigError(f"model.factory {self.spec!r}: no file {str(path)!r} (paths are taken from the "
                                  f"working folder, {str(Path.cwd())!r})")
            name = f"cohort_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
            loaded = sys.modules.get(name)
            if loaded is None:
                found = importlib.util.spec_from_file_location(name, path)
                loaded = importlib.util.module_from_spec(found)
                sys.modules[name] = loaded  # so that pickles of what it defines find it
                try:
                    found.loader.exec_module(loaded)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            try:
                loaded = importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"model.factory {self.spec!r}: cannot import {module!r} ({e}); give an importable "
                                  "module or a file path ending in .py") from e
        fn = getattr(loaded, attr, None)
        if not callable(fn):
            raise ConfigError(f"model.factory {self.spec!r}: {module!r} has no function {attr!r}")
        return fn

    def __call__(self) -> Any:
        fn = self.function()
        try:  # (input_shape, outputs) when its first two parameters are required positional ones
            params = list(inspect.signature(fn).parameters.values())[:2]
            takes_shape = len(params) == 2 and all(
                p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        except (TypeError, ValueError):
            takes_shape = False
        return fn(self.input_shape, self.outputs) if takes_shape else fn()
