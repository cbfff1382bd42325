"""FedBuff: the staleness weight, buffered server steps on a virtual clock, and backend identity."""

import numpy as np
import pytest

import cohort
from fakes import Constant
from cohort.aggregation import staleness_weight
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.types import ClientUpdate, RoundContext
from cohort.server.loop import run
from cohort.server.policies import ClientSpeeds
from cohort.server.state import initial_state


@pytest.mark.parametrize("s", [0, 1, 3, 8])
def test_an_update_s_versions_old_gets_the_staleness_weight(s):
    step = staleness_weight(0.5)
    u = ClientUpdate(7, {"w": np.array([2.0, -4.0], np.float32)}, weight=5.0, num_examples=5, version=10)
    out, _ = step.update(u, (), RoundContext(round=1, seed=0, cohort_size=1, version=10 + s))
    np.testing.assert_allclose(out.delta["w"], np.array([2.0, -4.0]) / np.sqrt(1 + s), rtol=1e-6)
    assert out.weight == 5.0 and out.delta["w"].dtype == np.float32


def test_an_update_from_the_future_is_refused():
    u = ClientUpdate(1, {"w": np.zeros(1)}, 1.0, 1, version=5)
    with pytest.raises(UpdateRejected, match="newer than the server's 4"):
        staleness_weight().update(u, (), RoundContext(1, 0, 1, version=4))


def fedbuff_run(channel_cls=cohort.InProcessChannel, rounds=12, k=1, m=4, spread=5.0, **kw):
    algorithm = cohort.fedavg()
    settings = cohort.LoopSettings(rounds=rounds, policy=cohort.FedBuff(buffer_size=k, concurrency=m), speed_spread=spread)
    state = initial_state(algorithm, {"w": np.zeros(1)}, seed=3)
    channel = channel_cls(Constant(), algorithm.client, **kw)
    try:
        return run(state, algorithm=algorithm, channel=channel, num_clients=10, settings=settings)[0]
    finally:
        channel.close()


def test_each_server_step_adds_the_staleness_weighted_update():
    state = fedbuff_run()
    stale = [r["staleness_max"] for r in state.history]
    assert [r["staleness_mean"] for r in state.history] == stale  # K = 1: one update per step
    assert max(stale) >= 2  # four clients in flight at spread-out speeds: updates arrive stale
    np.testing.assert_allclose(state.model["w"], [sum((1 + s) ** -0.5 for s in stale)], rtol=1e-12)
    assert state.version == 12 and state.round == 12
    times = [r["simulated_time"] for r in state.history]
    assert all(b >= a for a, b in zip(times, times[1:])) and times[-1] > 0


def test_the_virtual_clock_orders_arrivals_by_client_speed():
    speeds = ClientSpeeds(seed=3, spread=10.0)
    durations = [speeds.duration(c) for c in range(200)]
    assert 0.1 <= min(durations) and max(durations) <= 1.0 and max(durations) / min(durations) > 5
    assert durations == [ClientSpeeds(3, 10.0).duration(c) for c in range(200)]  # seeded
    assert ClientSpeeds(3, 1.0).duration(5) == 1.0


def test_buffered_steps_fold_k_updates_and_keep_m_in_flight():
    state = fedbuff_run(rounds=5, k=3, m=6)
    assert all(r["clients_succeeded"] == 3 for r in state.history)
    assert len(state.policy.in_flight) == 6
    # every snapshot kept is of a version some work in flight started on, older than the current one
    assert all(v < state.version and any(w.version == v for w in state.policy.in_flight) for v in state.policy.snapshots)


def test_fedbuff_is_the_same_in_the_process_pool():
    a = fedbuff_run(rounds=6, k=2, m=4)
    b = fedbuff_run(cohort.ProcessPoolChannel, rounds=6, k=2, m=4, workers=2)
    assert a.model["w"].tobytes() == b.model["w"].tobytes()
    assert [r["staleness_mean"] for r in a.history] == [r["staleness_mean"] for r in b.history]


def test_concurrency_above_the_population_is_refused_before_any_round():
    with pytest.raises(ConfigError, match="fedbuff.concurrency is 40 but there are only 10 clients"):
        fedbuff_run(m=40)
    with pytest.raises(ConfigError, match="fedbuff.buffer_size is 0"):
        cohort.FedBuff(buffer_size=0)


def test_with_one_client_in_flight_every_update_is_fresh():
    """M = K = 1: the client that takes the freed slot starts on the model the step just made."""
    state = fedbuff_run(rounds=6, k=1, m=1)
    assert [r["staleness_max"] for r in state.history] == [0] * 6
    np.testing.assert_allclose(state.model["w"], [6.0])
