"""How the round loop reaches clients."""

from cohort.channel.base import Channel, Reply, call_client
from cohort.channel.inprocess import InProcessChannel, ProcessPoolChannel

__all__ = ["Channel", "InProcessChannel", "ProcessPoolChannel", "Reply", "call_client"]
