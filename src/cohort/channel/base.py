"""The Channel protocol: how the round loop reaches clients. In-process, process pool and gRPC are
implementations of this one interface; the loop, the algorithms and the client code do not change
between them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from cohort.algorithms.base import ClientHalf, ClientState
from cohort.algorithms.fedavg import LocalSteps
from cohort.client.base import ClientFn
from cohort.channel.runtime import Outcome, run_client
from cohort.client.store import ClientStateStore
from cohort.core.arrays import nbytes
from cohort.core.errors import ConfigError
from cohort.core.records import merged
from cohort.core.types import ClientFailure, FailureStage, Groups, Instruction, Message, Reply


class Channel(Protocol):
    bytes_sent: int  # payload sent to clients so far
    bytes_received: int  # payload received from clients so far

    def run(self, message: Message, instructions: Sequence[Instruction], timeout_s: float | None = None
            ) -> Iterator[tuple[int, Outcome]]:
        """Send ``message`` to each instruction's client (its config merged over ``message.config``).

        Yields ``(position in instructions, outcome)`` **in instruction order**, exactly once per
        instruction, holding at most a bounded number of replies that arrived ahead of a slower one;
        a client that fails, raises or misses the ``timeout_s`` deadline yields a ClientFailure.
        Never raises for a client's fault.
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class LiveChannel(Channel, Protocol):
    """A channel to clients that come and go on their own (gRPC). Beside :class:`Channel`:

    - ``available()``: the ids of the clients connected now; synchronous rounds sample from them.
    - ``run(..., arrival_order=True)``: outcomes as they arrive, not in instruction order; the caller
      may close the generator early (over-selection), and the tasks still out are then dropped.
    - ``submit(message, instruction) -> task id | None``, ``collect(timeout_s) -> (task id, outcome) |
      None`` and ``drop(task ids)``: tasks one by one, outcomes in arrival order (FedBuff).
    """

    def available(self) -> list[int]: ...

    def submit(self, message: Message, instruction: Instruction) -> int | None: ...

    def collect(self, timeout_s: float | None) -> tuple[int, Outcome] | None: ...

    def drop(self, task_ids: Sequence[int]) -> None: ...


def is_live(channel: object) -> bool:
    """Whether ``channel`` reaches clients that come and go (a :class:`LiveChannel`) rather than a
    simulation's fixed population."""
    return isinstance(channel, LiveChannel)


def readonly(groups: Groups) -> Groups:
    """Read-only copies of every array over immutable memory (bytes): a client that writes into what
    it received, or tries to make it writable again, gets an error instead of changing the global
    model or what the next client receives. One copy per task call, shared by its clients."""
    out = {}
    for g, arrays in groups.items():
        frozen = {}
        for k, a in arrays.items():
            a = np.asarray(a)
            frozen[k] = np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)
        out[g] = frozen
    return out


def groups_nbytes(groups: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    return sum(nbytes(a) for a in groups.values())


def reply_nbytes(outcome: Outcome) -> int:
    """Bytes a reply carries as raw tensors (what a simulation counts as received)."""
    if isinstance(outcome, Reply) and isinstance(outcome.arrays, Mapping):
        return sum(getattr(a, "nbytes", 0) for g in outcome.arrays.values() if isinstance(g, Mapping) for a in g.values())
    return 0


def client_message(message: Message, instruction: Instruction) -> Message:
    """One client's message: its own dicts (what it adds or removes reaches no one else), the arrays shared."""
    config = merged(message.config, instruction.config)
    return Message(message.task, {g: dict(arrays) for g, arrays in message.arrays.items()}, config, message.version)


class SimulationChannel:
    """What the simulation backends share: the client code, the algorithm's client half, the store
    of per-client state (the client runtime owns it in simulation), and traffic counters."""

    def __init__(self, client_fn: ClientFn, client_half: ClientHalf | None = None, *,
                 states: ClientStateStore | None = None) -> None:
        if not callable(client_fn):
            raise ConfigError(f"client_fn is a {type(client_fn).__name__}; expected a callable client_id -> client")
        self.client_fn = client_fn
        self.client_half = client_half if client_half is not None else LocalSteps()
        self.states = states if states is not None else ClientStateStore()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.max_held = 0  # most replies held at once while waiting for a slower one (a memory bound)

    def _sent(self, message: Message, count: int) -> None:
        self.bytes_sent += groups_nbytes(message.arrays) * count

    def _received(self, cid: int, outcome: Outcome, state_before: ClientState, state_after: ClientState) -> Outcome:
        self.bytes_received += reply_nbytes(outcome)
        if state_after is not state_before:
            self.states.put(cid, state_after)
        return outcome

    def _run_here(self, message: Message, ins: Instruction) -> tuple[Outcome, ClientState, ClientState]:
        before = self.states.get(ins.client_id)
        outcome, after = run_client(self.client_fn, self.client_half, ins.client_id, client_message(message, ins), before)
        return outcome, before, after


def timed_out(pending, instructions: Sequence[Instruction], next_submit: int, arrived: dict, timeout_s) -> None:
    """The deadline passed: every task still out (``pending``: handle -> (position, instruction, state,
    ...)) and every one not yet sent fails with stage "timeout", into ``arrived``; ``pending`` is emptied."""
    reason = f"no reply within the {timeout_s}s round deadline"
    for pos, ins, state, *_ in pending.values():
        arrived[pos] = (ClientFailure(ins.client_id, FailureStage.TIMEOUT, reason), state, state)
    for pos in range(next_submit, len(instructions)):
        arrived[pos] = (ClientFailure(instructions[pos].client_id, FailureStage.TIMEOUT, reason), None, None)
    pending.clear()
