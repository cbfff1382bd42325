"""FedAsync: an arrival is mixed into the model as x_t = (1 − α_t) x_{t−1} + α_t x_new with
α_t = α·s(t − τ), by hand; malformed arrivals are refused before any arithmetic; it runs in
simulation (the same bits in the process pool) and over gRPC in real arrival order."""

import threading

import numpy as np
import pytest

import cohort
from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, Reply, RoundContext
from cohort.experiment import run as run_config
from cohort.server.fedasync import FedAsync
from cohort.server.loop import run
from cohort.server.policies import InFlight
from cohort.server.state import initial_state
from fakes import Sleepy


@pytest.mark.parametrize("staleness, weight", [("constant", 1.0), ("polynomial", (3 + 1) ** -0.5),
                                               ("hinge", 1 / (0.5 * (3 - 1) + 1))])
def test_an_arrival_is_mixed_in_by_hand(staleness, weight):
    policy = FedAsync(alpha=0.6, concurrency=2, staleness=staleness, a=0.5, hinge_b=1)
    x_tau = {"model": {"w": np.array([1.0, 2.0], np.float32)}}
    x_prev = {"model": {"w": np.array([3.0, 0.0], np.float32)}}
    delta = {"model": {"w": np.array([0.5, -1.0], np.float32)}}
    work = InFlight(0.0, 0, 7, version=2, reply=Reply(delta, 10))
    out = policy._stale(work, RoundContext(6, 0, 1, version=5), x_tau, x_prev)  # 3 versions old
    a_t = 0.6 * weight
    x_new = x_tau["model"]["w"] + delta["model"]["w"]
    expected = (1 - a_t) * x_prev["model"]["w"] + a_t * x_new
    np.testing.assert_allclose(x_prev["model"]["w"] + out.arrays["model"]["w"], expected, rtol=1e-6)


def test_a_malformed_arrival_is_refused_before_any_arithmetic():
    policy = FedAsync()
    groups = {"model": {"w": np.zeros(2, np.float32)}}
    bad = InFlight(0.0, 0, 3, 0, reply=Reply({"model": {"w": np.zeros(1, np.float32)}}, 1))  # would broadcast
    out = policy._stale(bad, RoundContext(1, 0, 1, version=0), groups, groups)
    assert isinstance(out, ClientFailure) and "update of client 3" in out.reason


def test_fedasync_in_simulation_is_the_same_in_the_process_pool(tmp_path):
    sets = ["rounds=12", "output.progress=false", "server.policy=fedasync", "fedasync.concurrency=4",
            "simulation.speed_spread=4", "fedasync.staleness=hinge", "fedasync.hinge_b=1"]
    here = run_config(load_config(None, sets), write=False).state
    pool = run_config(load_config(None, [*sets, "simulation.backend=processes", "simulation.workers=2"]), write=False).state
    assert here.round == 12 and all(h["clients_succeeded"] == 1 for h in here.history)
    assert max(h["staleness_max"] for h in here.history) >= 1
    for k in here.model:
        assert here.model[k].tobytes() == pool.model[k].tobytes()


def test_fedasync_over_grpc_in_real_arrival_order():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    for cid, seconds in enumerate([0.01, 0.03, 0.06]):
        threading.Thread(target=serve, args=(channel.address, Sleepy(seconds), cid), daemon=True,
                         kwargs={"retry_for_s": 5, "log": lambda s: None}).start()
    channel.wait_for_clients(3, 20)
    algorithm = cohort.fedavg()
    settings = cohort.LoopSettings(rounds=15, policy=FedAsync(alpha=0.5, concurrency=3, staleness="constant"),
                                   round_timeout_s=30)
    try:
        final, why = run(initial_state(algorithm, {"w": np.zeros(1)}, seed=1), algorithm=algorithm, channel=channel,
                         num_clients=3, settings=settings)
    finally:
        channel.close()
    assert why == "rounds" and final.round == 15
    # every client adds +1 to the model it was sent: each mix moves w up, by at most α·(1 + lag)
    assert 0 < float(final.model["w"][0]) <= 15 * 0.5 * 3


def test_bad_settings_are_refused():
    for sets, key in ((["fedasync.alpha=0"], "fedasync.alpha"), (["fedasync.staleness=linear"], "fedasync.staleness"),
                      (["server.policy=fedasync", "server.over_selection=0.2"], "server.over_selection")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, sets)
    with pytest.raises(ConfigError, match="fedasync.alpha"):
        FedAsync(alpha=1.5)


def test_a_resumed_fedasync_run_ends_with_the_same_bits(tmp_path):
    sets = ["output.progress=false", f"output.dir={tmp_path}", "server.policy=fedasync", "fedasync.concurrency=4",
            "simulation.speed_spread=4"]
    whole = run_config(load_config(None, [*sets, "rounds=12", "name=whole"])).state
    half = run_config(load_config(None, [*sets, "rounds=6", "name=half"]))
    resumed = run_config(load_config(None, [*sets, "rounds=12", "name=half"]), resume=half.folder).state
    assert resumed.round == 12 and [h["round"] for h in resumed.history] == list(range(1, 13))
    for k in whole.model:  # the work in flight and the versions it started on came back from the checkpoint
        assert whole.model[k].tobytes() == resumed.model[k].tobytes()
