"""The straggler deadline: once half of a deployed round's cohort answered, the rest get a bounded time
more; a client that heartbeats but never answers costs a round that, not the whole fixed deadline."""

import time

import numpy as np
import pytest

from cohort import EvaluateResult, FitResult
from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.channel.stragglers import RoundClock, StragglerRule
from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, Reply


def test_the_clock_brings_the_deadline_forward_at_the_quorum_only():
    clock = RoundClock(4, 600.0, StragglerRule(2.0, 0.2))
    assert clock.remaining() == pytest.approx(600, abs=1)
    clock.answer()
    assert clock.remaining() > 500  # one of four is not yet half
    clock.answer()
    assert clock.remaining() == pytest.approx(0.2, abs=0.1)  # the half was instant: the floor applies
    assert "2 of its 4 clients answered" in clock.why and "server.straggler_factor 2" in clock.why
    off = RoundClock(4, None, StragglerRule(0.0, 1.0))
    for _ in range(4):
        off.answer()
    assert off.remaining() is None


@pytest.mark.parametrize("kwargs, key", [({"factor": -1}, "server.straggler_factor"),
                                         ({"min_s": 0}, "server.straggler_min_s"),
                                         ({"factor": float("nan")}, "server.straggler_factor")])
def test_bad_settings_are_named(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        StragglerRule(**kwargs)


class Quick:
    def fit(self, arrays, config):
        return FitResult({"w": np.ones_like(arrays["w"])}, 1)

    def evaluate(self, arrays, config):
        return EvaluateResult(0.0, 1)


class Silent(Quick):
    def fit(self, arrays, config):
        time.sleep(30)  # holds its task far past the straggler deadline, heartbeating all along
        return super().fit(arrays, config)


def test_a_client_that_never_answers_costs_the_straggler_time_not_the_deadline():
    import threading

    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, num_clients=4, heartbeat_s=0.2, bulk_port=None)
    channel.set_stragglers(StragglerRule(2.0, 1.0))
    threads = [threading.Thread(target=serve, args=(channel.address, (lambda cid: Silent() if cid == 3 else Quick()), c),
                                kwargs={"retry_for_s": 5, "log": lambda s: None}, daemon=True) for c in range(4)]
    try:
        for t in threads:
            t.start()
        channel.wait_for_clients(4, 30)
        message = Message("fit", {"model": {"w": np.zeros(3, np.float32)}}, {"round": 1}, 0)
        started = time.monotonic()
        outcomes = dict(channel.run(message, [Instruction(c, {}) for c in range(4)], timeout_s=600))
        took = time.monotonic() - started
    finally:
        channel.close()
    assert took < 10  # the half answered at once; the silent one had 1 s more, not 600
    assert all(isinstance(outcomes[p], Reply) for p in range(3))
    failure = outcomes[3]
    assert isinstance(failure, ClientFailure) and failure.stage == FailureStage.TIMEOUT
    assert "straggler deadline" in failure.reason
