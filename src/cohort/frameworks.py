"""The one place frameworks plug in. The core (config, loop, aggregation, channels) never imports a
framework; an experiment asks this registry for the chosen one, which is imported only then.

A framework provides: a model builder by name (checked against the data), the simulation's
``client_fn``, a server-side evaluator, the initial global arrays, and its own model file.
Keras and scikit-learn register here the same way the torch adapter does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError


@dataclass(frozen=True)
class Framework:
    name: str
    models: Sequence[str]  # model names it builds (``[model] name``)
    # (model name, feature shape, outputs, one example of the data) -> a picklable zero-argument model builder
    build_model: Callable[[str, tuple[int, ...], int, Any], Callable[[], Any]]
    # (model_fn, train dataset, partition, holdout partition or None, TrainSettings, seed) -> client_fn
    client_fn: Callable[..., Callable[[int], Any]]
    # (model_fn, test dataset) -> evaluate(arrays) -> metrics
    evaluator: Callable[[Callable[[], Any], Any], Callable[[NamedArrays], dict[str, float]]]
    # (model_fn, seed) -> the global arrays of round 0
    initial_arrays: Callable[[Callable[[], Any], int], NamedArrays]
    # (arrays, folder) -> the framework's own model file, beside model.safetensors
    save_model: Callable[[NamedArrays, Path], Path | None]


# name -> "module:attribute" of its Framework, imported on first use
_REGISTRY: dict[str, str | Framework] = {"torch": "cohort.client.torch:FRAMEWORK"}


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
