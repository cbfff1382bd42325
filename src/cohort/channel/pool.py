"""Single-machine simulation on every core: clients run in a pool of worker processes.

The global arrays go to the workers once per task through shared memory (each worker maps them
read-only), not pickled once per client. Replies come back in cohort order: at most ``2 × workers``
tasks are in flight or waiting to be yielded, so a straggler holds back a bounded number of replies.
With the same number of torch threads per client, results are bit-identical to the in-process channel.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from cohort.algorithms.base import ClientHalf, ClientState
from cohort.channel.base import SimulationChannel, client_message, timed_out
from cohort.channel.inprocess import check_threads
from cohort.channel.shared import SharedGroups, SharedRef, attach
from cohort.client.base import ClientFn
from cohort.channel.runtime import Outcome, run_client
from cohort.client.store import ClientStateStore
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message

MAX_WORKERS = 1024
WARM_UP_TIMEOUT_S = 300.0

# Worker-process side: each worker unpickles the client_fn and client half once (with the shared
# dataset inside) and keeps them, so its model is built once per worker, not once per client.
_worker: tuple[ClientFn, ClientHalf] | None = None


def _init_worker(client_fn: ClientFn, client_half: ClientHalf, threads: int, parent: int) -> None:
    global _worker
    _worker = (client_fn, client_half)
    # Ctrl-C reaches the whole process group: the parent stops the workers itself, so they ignore it
    # (else each prints its own KeyboardInterrupt traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch = sys.modules.get("torch")
    if torch is not None and threads:
        torch.set_num_threads(threads)
    # A worker outlives a parent killed by SIGKILL (no clean-up runs there): watch the parent and leave.
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="cohort-parent-watch").start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def _run_in_worker(ref: SharedRef, task: str, version: int, config, ins: Instruction, state: ClientState):
    client_fn, client_half = _worker
    message = client_message(Message(task, attach(ref), config, version), ins)
    outcome, after = run_client(client_fn, client_half, ins.client_id, message, state)
    changed = after is not state
    return outcome, changed, (after if changed else None)  # an unchanged state is not pickled back


def _warm_up() -> int:
    time.sleep(0.05)  # long enough that each worker takes one of these, not one worker all of them
    return os.getpid()


class ProcessPoolChannel(SimulationChannel):
    """Clients run in ``workers`` processes (default: one per core), each with ``threads`` torch threads.

    A client that misses the deadline fails with stage "timeout"; the pool is then stopped (its
    workers killed by PID) and started afresh on the next call, so a hung client cannot block a run.
    """

    def __init__(self, client_fn: ClientFn, client_half: ClientHalf | None = None, *, workers: int = 0,
                 threads: int = 1, start_method: str = "spawn", states: ClientStateStore | None = None) -> None:
        super().__init__(client_fn, client_half, states=states)
        if not (isinstance(workers, int) and not isinstance(workers, bool) and 0 <= workers <= MAX_WORKERS):
            raise ConfigError(f"simulation.workers is {workers!r}; expected an integer from 0 (one per core) to {MAX_WORKERS}")
        self.workers = workers or os.cpu_count() or 1
        self.threads = check_threads(threads)
        self.window = 2 * self.workers  # tasks in flight or waiting to be yielded
        # spawn, not fork: forking a process whose torch/OpenMP threads already ran can deadlock.
        self._context = multiprocessing.get_context(start_method)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        """The pool, started and warmed up (workers spawned, torch imported, client_fn unpickled)
        so that start-up never eats into a round's deadline."""
        if self._pool is None:
            pool = ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_init_worker,
                                       initargs=(self.client_fn, self.client_half, self.threads, os.getpid()))
            self._pool = pool
            try:
                # every worker must have run its initializer (it then ignores Ctrl-C, its client_fn unpickled):
                # a worker still starting when the rounds begin would take a Ctrl-C with a traceback. The
                # pool starts workers as tasks find none idle, and a fast one may take every warm-up task,
                # so warm-ups go out until each worker has answered one.
                deadline, started = time.monotonic() + WARM_UP_TIMEOUT_S, set()
                while len(started) < self.workers:
                    for future in [pool.submit(_warm_up) for _ in range(self.workers)]:
                        started.add(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except Exception as e:
                self._discard(pool)
                if isinstance(e, TimeoutError):
                    raise TransportError(f"the worker processes did not start within {WARM_UP_TIMEOUT_S:.0f}s") from e
                raise TransportError(f"the worker processes failed to start: {type(e).__name__}: {e}. With "
                                     "simulation.backend = 'processes' the client_fn must pickle (a module-level "
                                     "function or class, not a lambda or a local function)") from e
        return self._pool

    def run(self, message: Message, instructions: Sequence[Instruction],
            timeout_s: float | None = None) -> Iterator[tuple[int, Outcome]]:
        self._sent(message, len(instructions))
        self._executor()
        shared = SharedGroups(message.arrays)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending: dict[Future, tuple[int, Instruction, ClientState, ProcessPoolExecutor]] = {}
        arrived: dict[int, tuple[Outcome, ClientState, ClientState]] = {}  # (outcome, state before, after)
        next_submit = next_yield = 0

        def submit(pos: int) -> None:
            ins = instructions[pos]
            state = self.states.get(ins.client_id)
            args = (_run_in_worker, shared.ref, message.task, message.version, message.config, ins, state)
            pool = self._executor()
            try:
                future = pool.submit(*args)
            except BrokenProcessPool:  # a worker died since: start afresh and submit there
                self._discard(pool)
                pool = self._executor()
                future = pool.submit(*args)
            pending[future] = (pos, ins, state, pool)

        try:
            while next_yield < len(instructions):
                while next_submit < len(instructions) and next_submit < next_yield + self.window:
                    submit(next_submit)
                    next_submit += 1
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
                if not done:  # deadline passed: everything not back yet fails, and the pool is replaced
                    timed_out(pending, instructions, next_submit, arrived, timeout_s)
                    next_submit = len(instructions)
                    self._discard(self._pool)
                for future in done:
                    pos, ins, state, pool = pending.pop(future)
                    try:
                        outcome, changed, after = future.result()
                        after = after if changed else state
                    except (Exception, SystemExit) as e:  # the worker died (BrokenProcessPool) or the reply did not unpickle
                        outcome, after = ClientFailure(ins.client_id, FailureStage.TRANSPORT,
                                                       f"worker process failed: {type(e).__name__}: {e}"), state
                        if isinstance(e, BrokenProcessPool):
                            self._discard(pool)
                    arrived[pos] = (outcome, state, after)
                while next_yield in arrived:
                    outcome, before, after = arrived.pop(next_yield)
                    ins = instructions[next_yield]
                    yield next_yield, self._received(ins.client_id, outcome, before, after)
                    next_yield += 1
                self.max_held = max(self.max_held, len(arrived))  # < window: they wait for a slower one
        finally:
            if pending:  # the consumer stopped early or raised: do not leave clients running unwatched
                self._discard(self._pool)
            shared.close()

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
        pool.shutdown(wait=False, cancel_futures=True)
        # Bounded: an interrupt that landed inside the executor's machinery must not hang the exit.
        manager = getattr(pool, "_executor_manager_thread", None)
        if manager is not None:
            manager.join(timeout=10)

    def close(self) -> None:
        """Stop the workers (they hold nothing that needs a graceful exit) and free the store."""
        self._discard(self._pool)
        self.states.close()

    def __enter__(self) -> "ProcessPoolChannel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
