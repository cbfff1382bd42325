"""The Channel protocol: how the round loop reaches clients. In-process, process pool and gRPC are
implementations of this one interface; the loop and the client code do not change between them."""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, Union

from cohort.client.base import ClientFn
from cohort.core.arrays import NamedArrays
from cohort.core.types import ClientFailure, EvaluateResult, FitResult, Instruction

Reply = Union[FitResult, EvaluateResult, ClientFailure]
TASKS = {"fit": FitResult, "evaluate": EvaluateResult}


class Channel(Protocol):
    bytes_sent: int  # payload sent to clients so far
    bytes_received: int  # payload received from clients so far

    def run(
        self, task: str, arrays: NamedArrays, instructions: Sequence[Instruction], timeout_s: float | None = None
    ) -> Iterator[tuple[int, Reply]]:
        """Send ``arrays`` and each instruction to its client for ``task`` ("fit" or "evaluate").

        Yields ``(position in instructions, reply)`` as replies arrive, in any order, exactly once per
        instruction; a client that fails, raises or misses the ``timeout_s`` deadline yields a
        :class:`ClientFailure`. Never raises for a client's fault.
        """
        ...

    def close(self) -> None: ...


def call_client(client_fn: ClientFn, task: str, instruction: Instruction, arrays: NamedArrays) -> Reply:
    """Build the client and run ``task``; anything it raises or returns wrongly becomes a ClientFailure."""
    cid = instruction.client_id
    try:
        client = client_fn(cid)
        result = getattr(client, task)(arrays, instruction.config)
    except (Exception, SystemExit) as e:  # user code: its exceptions, even sys.exit, fail this client only
        return ClientFailure(cid, task, _describe(e))
    expected = TASKS[task]
    if not isinstance(result, expected):
        return ClientFailure(cid, task, f"{task}() returned a {type(result).__name__}; expected {expected.__name__}")
    return result


def _describe(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-3:]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(e).__name__}: {e} (at {where})" if where else f"{type(e).__name__}: {e}"


def payload_nbytes(reply: Reply) -> int:
    """Bytes a reply carries as raw tensors (what an in-process channel counts as received)."""
    if isinstance(reply, FitResult) and isinstance(reply.delta, Mapping):
        return sum(getattr(a, "nbytes", 0) for a in reply.delta.values())
    return 0
