"""The task registry: which code answers the task a message names, in any client runtime.

An algorithm's client half answers its own tasks ("fit", "evaluate", ...: ``ClientHalf.tasks``). Every
other task belongs to the component that registers it (``register_task``): the secure-aggregation
protocol's key exchanges, a site's data agreement, and whatever comes next (federated analytics). A
task name may also be composed, ``protocol:task``: the protocol registered under that name
(``register_protocol``) wraps the inner task, which runs exactly as it would alone. ``secagg:fit`` is a
secure round's fit (the algorithm's fit, then masked); ``secagg:evaluate`` and
``secagg:data_statistics`` are the same protocol over an evaluation and a site's statistics. So the
client runtime holds no branch on any component's name, and a protocol is told what it wraps by the
task itself, never by a config flag the other side could set.

Components register when their module is imported. ``PROVIDERS`` lists the modules whose tasks a
client answers without having imported them first; a name not found after they are imported is
refused with the list of tasks that are known.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cohort.core.errors import ConfigError
from cohort.core.types import Message

# handler(half, message, trainer, state, account, under) -> (result, state); ``account`` is the client's
# privacy accounting of a reply (a protocol runs it before it transforms the reply), ``under`` the
# protocol the task runs inside ("secagg") or None: what the task is told by its caller, not by the message
Handler = Callable[..., tuple[Any, Any]]
# wrapper(inner, half, message, trainer, state, account) -> (result, state); ``inner(message, state)`` runs
# the wrapped task (``message.task`` is the inner task's name)
Wrapper = Callable[..., tuple[Any, Any]]

PROVIDERS = ("cohort.secagg.tasks", "cohort.client.site")  # modules that register tasks, imported on first need
SEP = ":"

_TASKS: dict[str, Handler] = {}
_PROTOCOLS: dict[str, Wrapper] = {}
_loaded = [False]


def register_task(*names: str) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` answers the tasks ``names``."""
    def add(handler: Handler) -> Handler:
        for name in names:
            if not name or SEP in name:
                raise ValueError(f"task name {name!r}: expected a non-empty name without {SEP!r}")
            if _TASKS.get(name, handler) is not handler:
                raise ValueError(f"task {name!r} is registered twice")
            _TASKS[name] = handler
        return handler
    return add


def register_protocol(name: str) -> Callable[[Wrapper], Wrapper]:
    """Decorator: ``wrapper`` runs any task ``name:TASK`` around TASK."""
    def add(wrapper: Wrapper) -> Wrapper:
        if not name or SEP in name:
            raise ValueError(f"protocol name {name!r}: expected a non-empty name without {SEP!r}")
        _PROTOCOLS[name] = wrapper
        return wrapper
    return add


def inner_task(task: str) -> str:
    """The task a composed name runs (``secagg:fit`` -> ``fit``)."""
    return task.rpartition(SEP)[2]


def _providers() -> None:
    if not _loaded[0]:
        _loaded[0] = True
        for module in PROVIDERS:
            importlib.import_module(module)


def handler_for(task: str) -> Handler | None:
    """The registered handler of ``task`` (composed names included), or None: the algorithm's own task."""
    protocol, sep, inner = task.partition(SEP)
    if not sep:
        if task not in _TASKS:
            _providers()
        return _TASKS.get(task)
    if protocol not in _PROTOCOLS:
        _providers()
    wrap = _PROTOCOLS.get(protocol)
    if wrap is None:
        raise ConfigError(f"task {task!r} asks for the protocol {protocol!r}, which this client does not know "
                          f"(known: {', '.join(sorted(_PROTOCOLS)) or 'none'})")

    def wrapped(half, message: Message, trainer, state, account, under=None):
        def run_inner(m: Message, s):
            return run_task(half, m, trainer, s, account, under=protocol)

        return wrap(run_inner, half, replace(message, task=inner), trainer, state, account)

    return wrapped


def run_task(half, message: Message, trainer, state, account=lambda reply, state: (reply, state), under=None):
    """Run ``message.task`` for an algorithm's client half: its own task, else a registered task or protocol."""
    if message.task in getattr(half, "tasks", ()):  # the algorithm's own ("fit", "evaluate"): no provider is imported
        return half.handle(message, trainer, state)
    handler = handler_for(message.task)
    if handler is not None:
        return handler(half, message, trainer, state, account, under=under)
    return half.handle(message, trainer, state)
