"""How the round loop reaches clients."""

from cohort.channel.base import Channel, SimulationChannel, readonly
from cohort.channel.inprocess import InProcessChannel
from cohort.channel.pool import ProcessPoolChannel

__all__ = ["Channel", "InProcessChannel", "ProcessPoolChannel", "SimulationChannel", "readonly"]
