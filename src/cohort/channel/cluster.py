"""Simulation beyond one machine: clients run in Ray actors (``simulation.backend = "ray"``,
``pip install 'cohort[ray]'``).

Each actor unpickles the client_fn and the algorithm's client half once and keeps them, as a worker of
the process pool does. The global arrays go into Ray's object store once per task call (``ray.put``),
and every actor on a node reads the same copy (NumPy arrays are mapped from the store, read-only), so
the model is not pickled once per client. Per-client state stays in the driver's store and travels
with each task, as in the process pool; replies come back in cohort order, at most ``2 × actors``
tasks in flight or waiting to be yielded. With the same torch threads per client the results are
bit-identical to the in-process channel.

``address``: "" starts Ray on this machine (``ray.init()``, ``workers`` CPUs, default one per core);
"auto" joins the cluster this machine belongs to; "ray://HOST:10001" connects to a remote cluster's
head through Ray Client. Every node needs cohort and the user's client code installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

from cohort.algorithms.base import ClientHalf, ClientState
from cohort.channel.base import SimulationChannel, client_message, timed_out
from cohort.channel.inprocess import check_threads
from cohort.channel.runtime import Outcome, run_client
from cohort.client.base import ClientFn
from cohort.client.store import ClientStateStore
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message

MAX_ACTORS = 4096
START_TIMEOUT_S = 300.0


class _Worker:
    """One actor: the client code, kept across tasks; a task is one client's part of a call."""

    def __init__(self, client_fn_ref, threads: int) -> None:
        import sys

        self.client_fn, self.client_half = client_fn_ref
        torch = sys.modules.get("torch")
        if torch is None:
            try:
                import torch  # noqa: F401  (the client code's framework, if it is torch)
            except ImportError:
                torch = None
        if torch is not None and threads:
            torch.set_num_threads(threads)

    def ready(self) -> int:
        return os.getpid()

    def run(self, arrays, task: str, version: int, config, ins: Instruction, state: ClientState):
        message = client_message(Message(task, arrays, config, version), ins)
        outcome, after = run_client(self.client_fn, self.client_half, ins.client_id, message, state)
        changed = after is not state
        return outcome, changed, (after if changed else None)


def check_address(address: str) -> str:
    if not isinstance(address, str) or not (address in ("", "auto") or address.startswith("ray://")
                                            or (":" in address and " " not in address)):
        raise ConfigError(f"simulation.ray_address is {address!r}; expected '' (start Ray here), 'auto' (the cluster "
                          "this machine is in), 'ray://HOST:10001' (a remote cluster's head) or 'HOST:PORT'")
    return address


class RayChannel(SimulationChannel):
    """Clients run in ``workers`` Ray actors (default: one per CPU of the cluster), ``threads`` torch
    threads each. A client that misses the deadline fails with stage "timeout", and the actors are
    replaced so that a hung client cannot block the run; an actor that dies fails its client with
    stage "transport" and is replaced."""

    def __init__(self, client_fn: ClientFn, client_half: ClientHalf | None = None, *, workers: int = 0,
                 threads: int = 1, address: str = "", states: ClientStateStore | None = None) -> None:
        super().__init__(client_fn, client_half, states=states)
        if not (isinstance(workers, int) and not isinstance(workers, bool) and 0 <= workers <= MAX_ACTORS):
            raise ConfigError(f"simulation.workers is {workers!r}; expected an integer from 0 (one per CPU) to {MAX_ACTORS}")
        self.address = check_address(address)
        self.requested = workers
        self.threads = check_threads(threads)
        self._ray = None
        self._started_ray = False
        self._actors: list = []
        self._code = None  # the client code in the object store

    # --- the cluster and its actors --------------------------------------------------------------
    def _start(self):
        if self._ray is not None and self._actors:
            return self._ray
        try:
            import ray
        except ImportError as e:
            raise ConfigError("simulation.backend = 'ray' needs Ray: pip install 'cohort[ray]'") from e
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = self.requested or os.cpu_count() or 1
            for attempt in range(2):  # a local Ray's start-up (its raylet registering) now and then times out
                try:
                    ray.init(**kwargs)
                    break
                except Exception as e:  # ConnectionError, RuntimeError: no cluster at that address
                    ray.shutdown()
                    if attempt == 1 or self.address:
                        raise TransportError(f"Ray did not start{' at ' + repr(self.address) if self.address else ''}: "
                                             f"{type(e).__name__}: {e}") from e
            self._started_ray = True
        self._ray = ray
        if self._code is None:
            try:
                self._code = ray.put((self.client_fn, self.client_half))
            except Exception as e:
                raise TransportError(f"the client code did not go to Ray: {type(e).__name__}: {e}. With "
                                     "simulation.backend = 'ray' the client_fn must pickle") from e
        count = self.requested or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._actors = [self._new_actor() for _ in range(count)]
        try:
            ray.get([a.ready.remote() for a in self._actors], timeout=START_TIMEOUT_S)
        except Exception as e:
            self._kill_actors()
            raise TransportError(f"the Ray actors did not start: {type(e).__name__}: {e}") from e
        return ray

    @property
    def workers(self) -> int:
        return len(self._actors)

    def _kill_actors(self) -> None:
        ray, self._actors, actors = self._ray, [], self._actors
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass

    # --- a task call ---------------------------------------------------------------------------------
    def run(self, message: Message, instructions: Sequence[Instruction],
            timeout_s: float | None = None) -> Iterator[tuple[int, Outcome]]:
        self._sent(message, len(instructions))
        ray = self._start()
        arrays = ray.put({g: dict(a) for g, a in message.arrays.items()})  # once per call, read by every actor
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        free = list(range(len(self._actors)))
        window = 2 * len(self._actors)
        pending: dict = {}  # object ref -> (position, instruction, state, actor index)
        arrived: dict[int, tuple[Outcome, ClientState, ClientState]] = {}
        next_submit = next_yield = 0
        try:
            while next_yield < len(instructions):
                while free and next_submit < len(instructions) and next_submit < next_yield + window:
                    ins = instructions[next_submit]
                    state = self.states.get(ins.client_id)
                    k = free.pop()
                    ref = self._actors[k].run.remote(arrays, message.task, message.version, message.config, ins, state)
                    pending[ref] = (next_submit, ins, state, k)
                    next_submit += 1
                if pending:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
                    if not done:  # the deadline: what is not back fails, and the actors are replaced
                        timed_out(pending, instructions, next_submit, arrived, timeout_s)
                        next_submit = len(instructions)
                        self._kill_actors()
                    for ref in done:
                        pos, ins, state, k = pending.pop(ref)
                        try:
                            outcome, changed, after = ray.get(ref)
                            after = after if changed else state
                            free.append(k)
                        except Exception as e:  # the actor died, or the reply did not unpickle
                            outcome, after = ClientFailure(ins.client_id, FailureStage.TRANSPORT,
                                                           f"Ray actor failed: {type(e).__name__}: {e}"), state
                            self._replace(k)
                            free.append(k)
                        arrived[pos] = (outcome, state, after)
                while next_yield in arrived:
                    outcome, before, after = arrived.pop(next_yield)
                    yield next_yield, self._received(instructions[next_yield].client_id, outcome, before, after)
                    next_yield += 1
                self.max_held = max(self.max_held, len(arrived))
        finally:
            if pending:  # the consumer stopped early: do not leave clients running unwatched
                self._kill_actors()
            del arrays

    def _new_actor(self):
        """One actor (one CPU) holding the client code; it starts in the background."""
        return self._ray.remote(num_cpus=1)(_Worker).remote(self._code, self.threads)

    def _replace(self, k: int) -> None:
        ray = self._ray
        try:
            ray.kill(self._actors[k])
        except Exception:
            pass
        actor = self._new_actor()
        try:  # started (code unpickled, torch imported) before it takes a client, whose deadline it must not eat
            ray.get(actor.ready.remote(), timeout=START_TIMEOUT_S)
        except Exception as e:
            raise TransportError(f"a replacement Ray actor did not start: {type(e).__name__}: {e}") from e
        self._actors[k] = actor

    def close(self) -> None:
        """Stop the actors, and Ray itself if this channel started it; free the store."""
        if self._ray is not None:
            self._kill_actors()
            if self._started_ray:
                self._ray.shutdown()
                self._started_ray = False
            self._ray, self._code = None, None
        self.states.close()

    def __enter__(self) -> "RayChannel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
