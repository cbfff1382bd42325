"""Typed tables: a TOML table read into a frozen dataclass, every key known and every value of its type.

The run's config (``cohort.config``) and a site's policy (``cohort.governance.policy``) are both read
this way, so an unknown key gets the same message with a suggestion, and a value of the wrong type
names its full key. (Written here rather than with pydantic: ~100 lines give messages in our words,
plain picklable dataclasses and one dependency fewer.)
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from cohort.core.errors import ConfigError


def build(cls: type, data: Any, where: str, sections: Mapping[str, type] | None = None) -> Any:
    """``cls`` from the table ``data``; with ``sections`` (the registered ones, for RunConfig), those tables
    go into its ``sections`` field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the config'} is {data!r}; expected a table of settings")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)} - ({"sections"} if sections is not None else set()) | set(sections or ())
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{where}{close[0]}'?" if close else "."
            if not known:
                raise ConfigError(f"unknown config key '{where}{key}': [{where.rstrip('.')}] takes no settings")
            if not close:
                lower = {k.lower(): k for k in known}
                close = [lower[key.lower()]] if isinstance(key, str) and key.lower() in lower else close
                hint = f"; did you mean '{where}{close[0]}'?" if close else hint
            raise ConfigError(f"unknown config key '{where}{key}'{hint} Known keys{' in [' + where.rstrip('.') + ']' if where else ''}: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if sections is not None and key in sections:
            kwargs.setdefault("sections", {})[key] = build(sections[key], value, f"{key}.")
            continue
        kind = hints[key]
        if is_dataclass(kind):
            kwargs[key] = build(kind, value, f"{where}{key}.")
        else:
            kwargs[key] = coerce(value, kind, f"{where}{key}")
    return cls(**kwargs)  # each section's __post_init__ checks its values, naming the full key


def coerce(value: Any, kind: Any, key: str) -> Any:
    if typing.get_origin(kind) is tuple:  # a list of strings, e.g. fedper.personal = ["4"]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key} is {value!r}; expected a list of strings, e.g. [\"4\"]")
    if typing.get_origin(kind) is dict:  # a table, e.g. data.missing_by_column = {chol = ["0"]}
        _, inner = typing.get_args(kind)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is {value!r}; expected a table, e.g. {{name = value}}")
        if inner is Any:  # a free-form table ([app]): TOML's own values, checked to be plain data
            return {str(k): plain(v, f"{key}.{k}") for k, v in value.items()}
        return {str(k): coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join({bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(t, "unset") for t in allowed if t is not type(None))
    raise ConfigError(f"{key} is {value!r}; expected {names}")


def plain(value: Any, key: str) -> Any:
    """A free-form table's value: a number, boolean or string, or a list or table of them."""
    if isinstance(value, dict):
        return {str(k): plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} is {value!r}; expected a finite number")
    if isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"{key} is {value!r} (a {type(value).__name__}); expected a number, boolean, string, or a list "
                      "or table of them")
