"""How the round loop reaches clients."""

from cohort.channel.base import Channel, SimulationChannel, readonly
from cohort.channel.inprocess import InProcessChannel
from cohort.channel.pool import ProcessPoolChannel

BACKENDS = ("inprocess", "processes", "vectorized", "ray")  # the simulation backends (cohort.simulation.make_channel)

__all__ = ["BACKENDS", "Channel", "InProcessChannel", "ProcessPoolChannel", "SimulationChannel", "readonly"]
