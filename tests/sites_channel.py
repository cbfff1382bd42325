"""The channel a deployed server has to its sites, here in one process: each site its own SiteClient."""

from cohort.algorithms import ALGORITHMS
from cohort.channel import InProcessChannel


class Sites:
    """``sites``: client id -> SiteClient (or a wrapper of one); answers as a live channel's ``available()`` and ``run``."""

    def __init__(self, sites):
        self.sites = sites
        self.channel = InProcessChannel(lambda c: sites[c], ALGORITHMS["fedavg"]().client)

    def available(self):
        return sorted(self.sites)

    def run(self, message, instructions, timeout_s=None):
        return self.channel.run(message, instructions, timeout_s)
