"""Over-selection: sample more clients than a round needs and close it once enough have reported.
In simulation the virtual clock decides who reports first (the same clients and bits in every
backend); over gRPC the first results to arrive count and a straggler is not waited for."""

import threading
import time

import numpy as np
import pytest

import cohort
from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.core.errors import ConfigError
from cohort.server.loop import run
from cohort.server.policies import ClientSpeeds
from cohort.server.sampling import sample_cohort
from cohort.server.state import initial_state
from fakes import Constant, ScriptedClients, Sleepy

SPREAD = 4.0


def sync_run(channel, rounds=3, over=0.4, fraction=0.5, num_clients=10):
    algorithm = cohort.fedavg()
    settings = cohort.LoopSettings(rounds=rounds, fraction=fraction, over_selection=over, speed_spread=SPREAD)
    state = initial_state(algorithm, {"w": np.zeros(2, np.float32), "b": np.zeros((), np.float32)}, seed=5)
    try:
        return run(state, algorithm=algorithm, channel=channel, num_clients=num_clients, settings=settings)[0]
    finally:
        channel.close()


def test_the_fastest_clients_on_the_virtual_clock_close_the_round():
    state = sync_run(cohort.InProcessChannel(ScriptedClients()))
    speeds = ClientSpeeds(5, SPREAD)
    for r in state.history:  # 5 needed of 10; ⌈5 · 1.4⌉ = 7 sampled; the 2 slowest are not run
        assert (r["clients_sampled"], r["clients_succeeded"], r["clients_not_needed"]) == (7, 5, 2)
    plain = sync_run(cohort.InProcessChannel(ScriptedClients()), over=0.0)
    assert all(r["clients_sampled"] == 5 for r in plain.history) and "clients_not_needed" not in plain.history[0]
    # each round's clock advances by the 5th-fastest of its 7 (the round closes when it reports)
    steps = np.diff([0.0] + [r["simulated_time"] for r in state.history])
    for r, step in zip(range(1, 4), steps):
        cohort_r = sample_cohort(10, 7, 5, r)
        assert step == pytest.approx(sorted(speeds.duration(int(c)) for c in cohort_r)[4])
        assert step < max(speeds.duration(int(c)) for c in cohort_r)


def test_a_failure_among_the_fastest_is_replaced_by_the_next_to_arrive():
    speeds = ClientSpeeds(5, SPREAD)
    fastest = min(range(10), key=speeds.duration)
    state = sync_run(cohort.InProcessChannel(ScriptedClients({fastest: "raise"})), rounds=6)
    sampled_it = [r for r in state.history if any(f"client {fastest} " in f for f in r.get("failures", []))]
    assert sampled_it  # it was in some cohort, failed, and the round still took 5 updates
    assert all(r["clients_succeeded"] == 5 and r["status"] == "ok" for r in state.history)
    assert all(r["clients_not_needed"] == 1 for r in sampled_it)


def test_over_selection_is_the_same_in_the_process_pool():
    a = sync_run(cohort.InProcessChannel(ScriptedClients()))
    b = sync_run(cohort.ProcessPoolChannel(ScriptedClients(), workers=2))
    assert a.model["w"].tobytes() == b.model["w"].tobytes()
    assert [r["simulated_time"] for r in a.history] == [r["simulated_time"] for r in b.history]


def test_over_grpc_a_straggler_is_not_waited_for():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    apps = {0: Constant(), 1: Constant(), 2: Constant(), 3: Sleepy(30)}
    threads = []
    for cid, app in apps.items():
        t = threading.Thread(target=serve, args=(channel.address, app, cid), daemon=True,
                             kwargs={"retry_for_s": 5, "log": lambda s: None})
        t.start()
        threads.append(t)
    channel.wait_for_clients(4, 20)
    algorithm = cohort.fedavg()
    settings = cohort.LoopSettings(rounds=2, fraction=0.75, over_selection=0.34)
    state = initial_state(algorithm, {"w": np.zeros(1)}, seed=1)
    started = time.monotonic()
    try:
        state = run(state, algorithm=algorithm, channel=channel, num_clients=4, settings=settings)[0]
    finally:
        channel.close()
    assert time.monotonic() - started < 20  # never the sleeper's 30 s
    for r in state.history:  # needs 3 of 4; all 4 sampled; the sleeper's result never counts
        assert (r["clients_sampled"], r["clients_succeeded"], r["clients_not_needed"]) == (4, 3, 1)
    np.testing.assert_allclose(state.model["w"], [2.0])  # each round: the mean of three +1 updates


@pytest.mark.parametrize("value", [-0.1, 11, float("nan"), True])
def test_bad_over_selection_is_refused(value):
    with pytest.raises(ConfigError, match="over_selection"):
        cohort.LoopSettings(rounds=1, over_selection=value)


def test_over_selection_in_a_config(tmp_path):
    from cohort.config import load_config

    with pytest.raises(ConfigError, match="server.over_selection"):
        load_config(None, ["server.over_selection=-1"])
    with pytest.raises(ConfigError, match="over-selection is for policies that sample each round.s clients: sync"):
        load_config(None, ["server.over_selection=0.3", "server.policy='fedbuff'"])
    config = load_config(None, ["server.over_selection=0.3", "server.fraction=0.5", "rounds=2", "data.num_clients=6",
                                f"output.dir='{tmp_path}'"])
    from cohort.experiment import run as run_experiment

    result = run_experiment(config)
    assert all((r["clients_sampled"], r["clients_succeeded"]) == (4, 3) for r in result.state.history)
