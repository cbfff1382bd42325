"""Single-machine simulation: clients run in this process, one after another, or in a pool of worker
processes that uses every core. Both call the same client code in the same way; with the same number
of torch threads per client they give bit-identical replies."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from cohort.channel.base import Reply, call_client, payload_nbytes
from cohort.client.base import ClientFn
from cohort.core.arrays import NamedArrays, nbytes
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, Instruction


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (0 leaves torch's default). Float results of torch ops
    depend on the thread count, so backends that must agree bit for bit use the same ``n``."""
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


class _Counting:
    bytes_sent = 0
    bytes_received = 0

    def _count(self, arrays: NamedArrays, instructions: Sequence[Instruction]) -> None:
        self.bytes_sent += nbytes(arrays) * len(instructions)

    def _received(self, reply: Reply) -> Reply:
        self.bytes_received += payload_nbytes(reply)
        return reply


class InProcessChannel(_Counting):
    """Clients run one after another in this process (one shared model, no copies).

    A running client cannot be interrupted here: the deadline is checked between clients, and the
    clients not started by then fail with stage "timeout".
    """

    def __init__(self, client_fn: ClientFn, *, threads: int = 1) -> None:
        if threads < 0:
            raise ConfigError(f"simulation.threads is {threads}; expected >= 0 (0: torch's default)")
        self.client_fn, self.threads = client_fn, threads

    def run(self, task: str, arrays: NamedArrays, instructions: Sequence[Instruction],
            timeout_s: float | None = None) -> Iterator[tuple[int, Reply]]:
        self._count(arrays, instructions)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with torch_threads(self.threads):
            for pos, ins in enumerate(instructions):
                if deadline is not None and time.monotonic() > deadline:
                    yield pos, ClientFailure(ins.client_id, "timeout", f"not started within the {timeout_s}s round deadline")
                    continue
                yield pos, self._received(call_client(self.client_fn, task, ins, arrays))

    def close(self) -> None:
        pass


# Worker-process side: each worker unpickles the client_fn once (with the shared dataset inside it)
# and keeps it, so its model is built once per worker, not once per client.
_worker_client_fn: ClientFn | None = None


def _init_worker(client_fn: ClientFn, threads: int) -> None:
    global _worker_client_fn
    _worker_client_fn = client_fn
    torch = sys.modules.get("torch")
    if torch is not None and threads:
        torch.set_num_threads(threads)


def _run_in_worker(task: str, instruction: Instruction, arrays: NamedArrays) -> Reply:
    return call_client(_worker_client_fn, task, instruction, arrays)


def _warm_up() -> int:
    time.sleep(0.05)  # long enough that each worker takes one of these, not one worker all of them
    return os.getpid()


WARM_UP_TIMEOUT_S = 300.0


class ProcessPoolChannel(_Counting):
    """Clients run in ``workers`` processes (default: one per core), each with ``threads`` torch
    threads. At most two tasks per worker are in flight, so replies waiting to be folded stay few.

    A client that misses the deadline fails with stage "timeout"; the pool is then stopped (its
    workers killed by PID) and started afresh on the next call, so a hung client cannot block a run.
    """

    def __init__(self, client_fn: ClientFn, *, workers: int = 0, threads: int = 1, start_method: str = "spawn") -> None:
        if workers < 0 or threads < 0:
            raise ConfigError(f"simulation.workers={workers}, simulation.threads={threads}; expected >= 0 (0: automatic)")
        self.client_fn = client_fn
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads
        # spawn, not fork: forking a process whose torch/OpenMP threads already ran can deadlock.
        self._context = multiprocessing.get_context(start_method)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        """The pool, started and warmed up (workers spawned, torch imported, client_fn unpickled)
        so that start-up never eats into a round's deadline."""
        if self._pool is None:
            pool = ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_init_worker,
                                       initargs=(self.client_fn, self.threads))
            self._pool = pool
            try:
                for future in [pool.submit(_warm_up) for _ in range(self.workers)]:
                    future.result(timeout=WARM_UP_TIMEOUT_S)
            except Exception as e:
                self._discard(pool)
                raise TransportError(f"the worker processes did not start within {WARM_UP_TIMEOUT_S}s: "
                                     f"{type(e).__name__}: {e}") from e
        return self._pool

    def run(self, task: str, arrays: NamedArrays, instructions: Sequence[Instruction],
            timeout_s: float | None = None) -> Iterator[tuple[int, Reply]]:
        self._count(arrays, instructions)
        self._executor()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        todo = iter(enumerate(instructions))
        pending: dict[Future, tuple[int, Instruction, ProcessPoolExecutor]] = {}

        def submit_next() -> None:
            for pos, ins in todo:
                pool = self._executor()
                try:
                    future = pool.submit(_run_in_worker, task, ins, arrays)
                except BrokenProcessPool:  # a worker died since: start afresh and submit there
                    self._discard(pool)
                    pool = self._executor()
                    future = pool.submit(_run_in_worker, task, ins, arrays)
                pending[future] = (pos, ins, pool)
                return

        try:
            for _ in range(2 * self.workers):
                submit_next()
            while pending:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
                if not done:  # deadline passed: everything not back yet fails, and the pool is replaced
                    reason = f"no reply within the {timeout_s}s round deadline"
                    timed_out = [(pos, ins) for pos, ins, _pool in pending.values()] + list(todo)
                    pending.clear()
                    self._discard(self._pool)
                    for pos, ins in timed_out:
                        yield pos, ClientFailure(ins.client_id, "timeout", reason)
                    return
                for future in done:
                    pos, ins, pool = pending.pop(future)
                    try:
                        reply = future.result()
                    except (Exception, SystemExit) as e:  # the worker died (BrokenProcessPool) or the reply did not unpickle
                        reply = ClientFailure(ins.client_id, task, f"worker process failed: {type(e).__name__}: {e}")
                        if isinstance(e, BrokenProcessPool):
                            self._discard(pool)
                    yield pos, self._received(reply)
                    submit_next()
        finally:
            if pending:  # the consumer stopped early or raised: do not leave clients running unwatched
                self._discard(self._pool)

    def _discard(self, pool: ProcessPoolExecutor | None) -> None:
        """Stop ``pool`` (killing its workers); the next task starts a fresh one."""
        if pool is None:
            return
        if pool is self._pool:
            self._pool = None
        # ProcessPoolExecutor has no public way to stop busy workers before Python 3.14
        # (terminate_workers); its _processes maps the PIDs of the workers it started.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "ProcessPoolChannel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
