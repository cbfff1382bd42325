"""FedBuff over gRPC: updates are folded in the order they really arrive. A straggler in flight does
not hold back the buffered steps, each update is scaled by its real staleness, and a client that
drops gives its slot to another."""

import threading
import time

import numpy as np

import cohort
from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.server.loop import run
from cohort.server.state import initial_state
from fakes import Sleepy


def federation(apps):
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    for cid, app in apps.items():
        threading.Thread(target=serve, args=(channel.address, app, cid), daemon=True,
                         kwargs={"retry_for_s": 5, "log": lambda s: None}).start()
    channel.wait_for_clients(len(apps), 20)
    return channel


def fedbuff(channel, rounds, k, m, num_clients):
    algorithm = cohort.fedavg()
    settings = cohort.LoopSettings(rounds=rounds, policy=cohort.FedBuff(buffer_size=k, concurrency=m),
                                   round_timeout_s=60)
    state = initial_state(algorithm, {"w": np.zeros(1)}, seed=2)
    try:
        return run(state, algorithm=algorithm, channel=channel, num_clients=num_clients, settings=settings)[0]
    finally:
        channel.close()


def test_buffered_steps_go_on_while_a_straggler_trains():
    channel = federation({0: Sleepy(0.02), 1: Sleepy(0.05), 2: Sleepy(0.08), 3: Sleepy(30)})
    started = time.monotonic()
    state = fedbuff(channel, rounds=6, k=2, m=3, num_clients=4)
    assert time.monotonic() - started < 20  # the 30 s client is never waited for
    assert [r["clients_succeeded"] for r in state.history] == [2] * 6
    expected = 0.0
    for r in state.history:  # each step: the mean of two +1 updates, each scaled by 1/√(1+s)
        s_max = r["staleness_max"]
        s_min = round(2 * r["staleness_mean"] - s_max)
        expected += ((1 + s_max) ** -0.5 + (1 + s_min) ** -0.5) / 2
    np.testing.assert_allclose(state.model["w"], [expected], rtol=1e-12)
    assert any(r["staleness_max"] >= 1 for r in state.history)  # with M > K, updates arrive stale
    assert state.version == 6 and state.policy.in_flight == () and state.policy.dispatched >= 6 + 2


def test_a_failing_client_is_an_arrival_that_brings_nothing():
    from fakes import ScriptedClients

    apps = {0: Sleepy(0.02), 1: ScriptedClients({1: "raise"}), 2: Sleepy(0.03)}
    channel = federation(apps)
    state = fedbuff(channel, rounds=5, k=2, m=2, num_clients=3)
    assert state.round == 5
    for r in state.history:  # K arrivals per step, failures included; only client 1 fails
        assert r["clients_succeeded"] + r["clients_failed"] == 2
        assert all(f.startswith("client 1 ") for f in r.get("failures", []))
        assert r["status"] == ("ok" if r["clients_succeeded"] else "skipped")
    assert sum(r["clients_failed"] for r in state.history) >= 1
    assert sum(r["clients_succeeded"] for r in state.history) >= 1


def test_one_fedbuff_policy_object_serves_two_runs():
    """The work in flight belongs to a run: a second run with the same settings starts clean."""
    algorithm = cohort.fedavg()
    settings = cohort.LoopSettings(rounds=2, policy=cohort.FedBuff(buffer_size=1, concurrency=2), round_timeout_s=30)
    for _ in range(2):
        channel = federation({0: Sleepy(0.01), 1: Sleepy(0.02)})
        started = time.monotonic()
        try:
            state = run(initial_state(algorithm, {"w": np.zeros(1)}, seed=2), algorithm=algorithm, channel=channel,
                        num_clients=2, settings=settings)[0]
        finally:
            channel.close()
        assert [r["clients_succeeded"] for r in state.history] == [1, 1] and time.monotonic() - started < 15
