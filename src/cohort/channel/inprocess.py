"""Single-machine simulation, one client after another in this process (one shared model, no copies)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence

from cohort.algorithms.base import ClientHalf
from cohort.channel.base import SimulationChannel, readonly
from cohort.client.base import ClientFn
from cohort.channel.runtime import Outcome
from cohort.client.store import ClientStateStore
from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message

MAX_THREADS = 1024


def check_threads(threads: object) -> int:
    if not (isinstance(threads, int) and not isinstance(threads, bool) and 0 <= threads <= MAX_THREADS):
        raise ConfigError(f"simulation.threads is {threads!r}; expected an integer from 0 (the framework's default) to {MAX_THREADS}")
    return threads


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run clients with ``n`` torch intra-op threads (0 leaves torch's default). Float results of torch
    ops depend on the thread count, so backends that must agree bit for bit use the same ``n``. Only
    client code runs inside: the loop's aggregation between clients is not governed by it."""
    torch = sys.modules.get("torch")  # a channel serves numpy clients too: never import torch here
    if torch is None or n == 0 or torch.get_num_threads() == n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class InProcessChannel(SimulationChannel):
    """Clients run one after another in this process.

    A running client cannot be interrupted here: the deadline is checked between clients, and the
    clients not started by then fail with stage "timeout". Replies come in order, none is held.
    """

    def __init__(self, client_fn: ClientFn, client_half: ClientHalf | None = None, *, threads: int = 1,
                 states: ClientStateStore | None = None) -> None:
        super().__init__(client_fn, client_half, states=states)
        self.threads = check_threads(threads)

    def run(self, message: Message, instructions: Sequence[Instruction],
            timeout_s: float | None = None) -> Iterator[tuple[int, Outcome]]:
        self._sent(message, len(instructions))
        message = Message(message.task, readonly(message.arrays), message.config, message.version)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for pos, ins in enumerate(instructions):
            if deadline is not None and time.monotonic() > deadline:
                yield pos, ClientFailure(ins.client_id, FailureStage.TIMEOUT, f"not started within the {timeout_s}s round deadline")
                continue
            with torch_threads(self.threads):
                outcome, before, after = self._run_here(message, ins)
            yield pos, self._received(ins.client_id, outcome, before, after)

    def close(self) -> None:
        self.states.close()
