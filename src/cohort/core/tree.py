"""Typed state trees to and from (JSON, arrays), for checkpoints.

A tree is made of NamedTuples, frozen dataclasses, enums, tuples, lists, dicts (str or int keys),
numpy arrays and plain scalars: what step states, policy states and the server state are made of.
Arrays go to a flat ``{key: array}`` dict (written as safetensors); everything else to JSON, with
each container tagged so it comes back as the same type. Classes are looked up by name only among
modules already imported (a checkpoint never makes Python import anything).
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

SCALARS = (type(None), bool, int, float, str)


def encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The JSON node of ``value``; its arrays are added to ``arrays``."""
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = np.require(value, requirements="C")  # 0-d stays 0-d (np.ascontiguousarray makes it 1-d)
        return {"array": key}
    if isinstance(value, np.generic):
        return {"scalar": value.dtype.str, "value": value.item()}
    if isinstance(value, enum.Enum):
        return {"enum": _name(type(value)), "value": value.value}
    if isinstance(value, SCALARS):
        return value
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return {"namedtuple": _name(type(value)), "fields": {f: encode(getattr(value, f), arrays) for f in value._fields}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"dataclass": _name(type(value)),
                "fields": {f.name: encode(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return {"list": [encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot write a dict key of type {type(k).__name__} ({k!r}) in a checkpoint")
        return {"dict": [[k, encode(v, arrays)] for k, v in value.items()]}
    raise TypeError(f"cannot write a {type(value).__name__} in a checkpoint; step and policy states must be "
                    "NamedTuples, dataclasses, tuples, lists, dicts, numpy arrays or plain numbers and strings")


def decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(node, SCALARS):
        return node
    if isinstance(node, list):  # JSON lists only appear inside tags
        raise ValueError("untagged list in a checkpoint tree")
    if "array" in node:
        return arrays[node["array"]]
    if "scalar" in node:
        return np.dtype(node["scalar"]).type(node["value"])
    if "enum" in node:
        return _find(node["enum"])(node["value"])
    if "namedtuple" in node:
        cls = _find(node["namedtuple"])
        return cls(**{f: decode(v, arrays) for f, v in node["fields"].items()})
    if "dataclass" in node:
        cls = _find(node["dataclass"])
        return cls(**{f: decode(v, arrays) for f, v in node["fields"].items()})
    if "tuple" in node:
        return tuple(decode(v, arrays) for v in node["tuple"])
    if "list" in node:
        return [decode(v, arrays) for v in node["list"]]
    if "dict" in node:
        return {k: decode(v, arrays) for k, v in node["dict"]}
    raise ValueError(f"unknown node in a checkpoint tree: {sorted(node)}")


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _find(name: str) -> type:
    module, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module)
    if obj is None:
        raise ValueError(f"the checkpoint holds a {qualname} from module {module}, which is not imported; "
                         "import the module that defines your algorithm's steps before resuming")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type) or not (issubclass(obj, (tuple, enum.Enum)) or dataclasses.is_dataclass(obj)):
        raise ValueError(f"the checkpoint names {name}, which is not a NamedTuple, dataclass or enum")
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
