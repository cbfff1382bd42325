"""How the round loop reaches clients; ``BACKENDS``: the simulation backends by name (``simulation.backend``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cohort.channel.base import Channel, SimulationChannel, readonly
from cohort.channel.inprocess import InProcessChannel
from cohort.channel.pool import ProcessPoolChannel


@dataclass(frozen=True)
class Backend:
    """A simulation backend: how to build its channel, the ``[simulation]`` keys only it reads, and their check."""

    build: Callable[..., SimulationChannel]  # (client_fn, client_half, *, workers, threads, states, address)
    own: tuple[str, ...] = ()  # simulation.* keys that only this backend reads: set with another backend, an error
    check: Callable[[Any], None] | None = None  # checks the [simulation] section when this backend is chosen


def _inprocess(client_fn, half, *, workers, threads, states, address):
    return InProcessChannel(client_fn, half, threads=threads, states=states)


def _processes(client_fn, half, *, workers, threads, states, address):
    return ProcessPoolChannel(client_fn, half, workers=workers, threads=threads, states=states)


def _vectorized(client_fn, half, *, workers, threads, states, address):  # torch, imported when chosen
    from cohort.channel.vectorized import VectorizedChannel

    return VectorizedChannel(client_fn, half, threads=threads, states=states)


def _ray(client_fn, half, *, workers, threads, states, address):  # the ray extra, imported when chosen
    from cohort.channel.cluster import RayChannel

    return RayChannel(client_fn, half, workers=workers, threads=threads, address=address, states=states)


def _ray_check(simulation) -> None:
    from cohort.channel.cluster import check_address

    check_address(simulation.ray_address)


BACKENDS: dict[str, Backend] = {
    "inprocess": Backend(_inprocess),
    "processes": Backend(_processes),
    "vectorized": Backend(_vectorized),  # many small-model clients at once (torch.func); other tasks as inprocess
    "ray": Backend(_ray, own=("ray_address",), check=_ray_check),
}

__all__ = ["BACKENDS", "Backend", "Channel", "InProcessChannel", "ProcessPoolChannel", "SimulationChannel", "readonly"]
