"""A client's context: who it is, the app's settings, this task's config record, and state of its own
that outlives the task (Flower's ``Context``, with cohort's per-client state underneath).

A :class:`ClientApp` turns a user's ``client_fn(context)`` into what the client runtime runs. For each
task it builds a :class:`Context` from the client's stored state and the message, calls the user's
function, and after the task stores ``context.state`` back as one group (``"app"``) of the client's
per-client state. That group is kept exactly as SCAFFOLD's cᵢ is: in the simulation's state store
(checkpointed with the run, so it survives a SIGKILL and ``--resume`` bit for bit) and, deployed, in
the client process (so it survives the server's restarts and the client's reconnections).

The app's records reach a client in the message's config under one key, ``"app"``:
``{"settings": the [app] table, "config": this task's record from the server app's fit_config or
evaluate_config}``. They never mix with the loop's own keys (``round``, ``seed``, ``version``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from cohort.core import records
from cohort.core.errors import ConfigError
from cohort.core.types import Groups, Message

# the app's record in the message's config (cohort.core.records), and the client state's group for Context.state
APP = records.APP

Scalar = bool | int | float | str
StateValue = np.ndarray | bool | int | float


@dataclass
class Context:
    """What a client's code knows about itself and its task. Build nothing from it that must outlive
    the task except through ``state``."""

    client_id: int
    name: str  # the client's name: its site's name, --name when deployed, else "client-ID"
    settings: Mapping[str, Any]  # the [app] table, the same for every client and the server (read-only)
    config: Mapping[str, Scalar]  # this task's record from the server app (fit_config / evaluate_config), read-only
    round: int  # the round this task belongs to (0 before any)
    task: str  # "fit", "evaluate", or a task an algorithm or protocol adds
    state: dict[str, StateValue] = field(default_factory=dict)  # kept across rounds: arrays and plain numbers


def records(message: Message) -> Mapping[str, Any]:
    """The app's records in ``message`` ({} when the server runs no app)."""
    found = message.config.get(APP) if isinstance(message.config, Mapping) else None
    return found if isinstance(found, Mapping) else {}


class ClientApp:
    """A client built from a :class:`Context`: ``ClientApp(client_fn)`` with ``client_fn(context)``
    returning a :class:`cohort.Client` or :class:`cohort.Trainer`. For the process-pool backend the
    function must pickle (define it at the top level of a module)."""

    def __init__(self, client_fn: Callable[[Context], Any], name: str = "") -> None:
        if not callable(client_fn):
            raise ConfigError(f"ClientApp takes a function context -> client; got a {type(client_fn).__name__}")
        self.client_fn, self.name = client_fn, name

    def named(self, name: str) -> "ClientApp":
        """This app for a client process that calls itself ``name`` (``cohort client --name``)."""
        return ClientApp(self.client_fn, name)

    def __call__(self, client_id: int) -> Any:
        """The client of ``client_id`` with a fresh context (for checks made before any task)."""
        return self.client_fn(Context(client_id, self.name or f"client-{client_id}", MappingProxyType({}),
                                      MappingProxyType({}), 0, "fit"))

    def open(self, client_id: int, message: Message, state: Groups | None) -> tuple[Any, Context, Groups | None]:
        """The client for this task, its context, and the state the algorithm's client half sees (every
        group but the app's own)."""
        found = records(message)
        own = dict(state or {})
        kept = own.pop(APP, None)
        config = message.config if isinstance(message.config, Mapping) else {}
        context = Context(client_id, self.name or f"client-{client_id}",
                          MappingProxyType(dict(found.get("settings") or {})), MappingProxyType(dict(found.get("config") or {})),
                          int(config.get("round", 0) or 0), message.task, _from_arrays(kept or {}))
        return self.client_fn(context), context, (own or None)

    def keep(self, context: Context, state: Groups | None) -> Groups | None:
        """The client's next state: the half's groups with ``context.state`` as the app's group."""
        own = dict(state or {})
        arrays = _to_arrays(context.state, context.client_id)
        if arrays:
            own[APP] = arrays
        return own or None


def _to_arrays(state: Mapping[str, Any], client_id: int) -> dict[str, np.ndarray]:
    """``context.state`` as named arrays: numbers become 0-d arrays (int64, float64 or bool)."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"client {client_id}: context.state is a {type(state).__name__}; keep a dict of arrays and "
                          "numbers in it")
    out = {}
    for k, v in state.items():
        if not isinstance(k, str) or not k or "/" in k:
            raise ConfigError(f"client {client_id}: context.state key {k!r}: expected a non-empty string without '/'")
        if isinstance(v, bool):
            out[k] = np.asarray(v, dtype=np.bool_)
        elif isinstance(v, int):
            if not -2**63 <= v < 2**63:
                raise ConfigError(f"client {client_id}: context.state[{k!r}] = {v} does not fit in 64 bits")
            out[k] = np.asarray(v, dtype=np.int64)
        elif isinstance(v, float):
            out[k] = np.asarray(v, dtype=np.float64)
        elif isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            out[k] = np.array(v, copy=True)  # the task may still hold and change the caller's array
        elif isinstance(v, np.generic) and v.dtype.kind in "biuf":
            out[k] = np.asarray(v)
        else:
            raise ConfigError(f"client {client_id}: context.state[{k!r}] is a {type(v).__name__}; keep numpy arrays "
                              "(numbers or booleans) and plain int, float or bool values in it (encode text yourself)")
    return out


def _from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, StateValue]:
    """The stored group back as ``context.state``: 0-d int64, float64 and bool arrays as Python numbers."""
    out: dict[str, StateValue] = {}
    for k, a in arrays.items():
        a = np.asarray(a)
        if a.ndim == 0 and a.dtype in (np.int64, np.float64, np.bool_):
            out[k] = a.item()
        else:
            out[k] = np.array(a, copy=True)  # the client may change it in place
    return out


def check_record(record: Any, what: str) -> dict[str, Scalar]:
    """A config record a server app made (``fit_config``): a dict of str -> bool, int, float or str."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{what} returned a {type(record).__name__}; expected a dict of names to numbers, "
                          "booleans or strings")
    out = {}
    for k, v in record.items():
        if not isinstance(k, str):
            raise ConfigError(f"{what} returned key {k!r}; expected string keys")
        if isinstance(v, np.generic):
            v = v.item()
        if not isinstance(v, (bool, int, float, str)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"{what} returned {k!r} = {v!r}; a config record holds numbers, booleans and strings "
                              "(arrays travel as the model's groups)")
        out[k] = v
    return out
