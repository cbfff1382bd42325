"""The network cost model: a task's transfer time by hand (10 clients, a 100 MB model, 1 ms of
latency: the issue's example), clients' sampled latencies and bandwidths seeded and bounded, the
virtual clock of synchronous and asynchronous runs includes the network, records split it from the
compute, and bad settings are refused."""

import math

import pytest

from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.experiment import run
from cohort.server.network import NetworkModel
from cohort.server.policies import ClientSpeeds


def test_a_tasks_transfer_time_by_hand():
    net = NetworkModel(0, latency_s=0.001, bandwidth_mbps=1000)
    model = 100 * 10**6  # bytes, down and up
    for cid in range(10):  # the same for every client without a spread
        assert net.transfer_s(cid, model, model) == pytest.approx(2 * 0.001 + 2 * model / (1000e6 / 8))
    speeds = ClientSpeeds(0, 1.0, net, model)
    assert speeds.duration(3) == pytest.approx(1.0 + 1.602)  # 1 s of compute beside 1.602 s of network
    assert NetworkModel(0, latency_s=0.05).transfer_s(0, model, model) == pytest.approx(0.1)  # no bandwidth limit


def test_sampled_clients_are_seeded_and_bounded():
    a, b = NetworkModel(7, 0.01, 100, spread=10), NetworkModel(7, 0.01, 100, spread=10)
    clients = [a.client(c) for c in range(200)]
    assert clients == [b.client(c) for c in range(200)]
    assert clients != [NetworkModel(8, 0.01, 100, spread=10).client(c) for c in range(200)]
    for latency, bandwidth in clients:
        assert 0.01 <= latency <= 0.1 + 1e-12 and 100e6 / 8 / 10 - 1e-6 <= bandwidth <= 100e6 / 8
    assert len({round(lat, 9) for lat, _ in clients}) == 200


def test_the_virtual_clock_and_the_records_include_the_network():
    sets = ["rounds=3", "output.progress=false"]
    plain = run(load_config(None, sets), write=False).state
    slow = run(load_config(None, [*sets, "network.latency_s=0.25", "network.bandwidth_mbps=0.01"]), write=False).state
    model = sum(a.nbytes for a in slow.model.values())
    expected = 2 * 0.25 + 2 * model / (0.01e6 / 8)
    for h in slow.history:
        assert h["network_s"] == pytest.approx(expected) and h["compute_s"] == 1.0
    assert slow.clock == pytest.approx(plain.clock + 3 * expected)
    assert "network_s" not in plain.history[0]
    fb = ["server.policy=fedbuff", "fedbuff.buffer_size=2", "fedbuff.concurrency=4"]
    a = run(load_config(None, [*sets, *fb]), write=False).state
    b = run(load_config(None, [*sets, *fb, "network.latency_s=0.1", "network.spread=20"]), write=False).state
    assert b.clock > a.clock and math.isfinite(b.clock)


@pytest.mark.parametrize("sets, key", [(["network.latency_s=-1"], "network.latency_s"),
                                       (["network.bandwidth_mbps=-5"], "network.bandwidth_mbps"),
                                       (["network.spread=0.5"], "network.spread")])
def test_bad_settings_are_refused(sets, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, sets)
