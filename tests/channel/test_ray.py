"""The Ray backend (cohort[ray]) on a local Ray: the same bits as the in-process channel, failures as
values, a deadline that fails the straggler and replaces the actors, a dead actor replaced."""

import os
import time
from pathlib import Path

import pytest
import ray  # the ray extra: make install and CI install it

from cohort.channel.cluster import RayChannel
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, Instruction, Message, Reply
from cohort.experiment import run
from fakes import ScriptedClients, start_arrays

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # the actors import the scripted clients (tests/fakes.py) by reference, as a pool's workers do
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    for attempt in range(3):  # Ray's own start-up (raylet registering with its GCS) now and then times out
        try:
            ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()


def fit():
    return Message("fit", {"model": start_arrays()}, {"round": 1, "seed": 0})


# FedAvg with federated evaluation (fit and evaluate tasks on the actors), and SCAFFOLD (client state);
# each run starts its own actors, the bulk of the time
@pytest.mark.parametrize("sets", [["server.algorithm=scaffold"],
                                  ["server.algorithm=fedavg", "evaluate.federated_fraction=0.5", "data.holdout_fraction=0.2"]])
def test_ray_gives_the_in_process_bits(sets):
    base = ["rounds=3", "data.num_clients=6", "server.fraction=0.5", "output.progress=false", *sets]
    on_ray = run(load_config(None, [*base, "simulation.backend=ray", "simulation.workers=2"]), write=False)
    here = run(load_config(None, base), write=False)
    for k in here.state.model:
        assert on_ray.state.model[k].tobytes() == here.state.model[k].tobytes(), k
    assert [h.get("federated_loss") for h in on_ray.state.history] == [h.get("federated_loss") for h in here.state.history]
    # SCAFFOLD: the server's control group depends on every client's cᵢ, kept between rounds in the
    # driver's store after travelling to and from the actors
    for group in here.state.groups:
        for k, a in here.state.groups[group].items():
            assert on_ray.state.groups[group][k].tobytes() == a.tobytes(), (group, k)


def test_failures_are_values_and_a_dead_actor_is_replaced():
    with RayChannel(ScriptedClients({2: "raise", 4: "exit", 5: "sysexit"}), workers=2) as channel:
        replies = dict(channel.run(fit(), [Instruction(c, {}) for c in range(6)], timeout_s=120))
        assert sorted(replies) == list(range(6))
        assert isinstance(replies[2], ClientFailure) and "client 2 broke" in replies[2].reason
        assert isinstance(replies[4], ClientFailure) and replies[4].stage == "transport" and "actor" in replies[4].reason
        assert isinstance(replies[5], ClientFailure) and "SystemExit" in replies[5].reason
        assert all(isinstance(replies[c], Reply) for c in (0, 1, 3))
        assert replies[3].arrays["model"]["w"].tolist() == [3.0, -3.0]
        again = dict(channel.run(fit(), [Instruction(c, {}) for c in (0, 1, 3)], timeout_s=120))
        assert all(isinstance(r, Reply) for r in again.values()) and channel.workers == 2


def test_the_deadline_fails_the_straggler_and_the_next_call_has_fresh_actors():
    with RayChannel(ScriptedClients({3: "sleep"}), workers=2) as channel:
        channel.run(fit(), [Instruction(0, {})], timeout_s=120).__next__()  # actors up before the clock starts
        started = time.monotonic()
        replies = dict(channel.run(fit(), [Instruction(c, {}) for c in (0, 3, 1)], timeout_s=3.0))
        assert time.monotonic() - started < 20
        assert isinstance(replies[1], ClientFailure) and replies[1].stage == "timeout" and replies[1].client_id == 3
        assert isinstance(replies[0], Reply)
        again = dict(channel.run(fit(), [Instruction(c, {}) for c in range(3)], timeout_s=120))
        assert all(isinstance(r, Reply) for r in again.values())


@pytest.mark.parametrize("sets, says", [
    (["simulation.ray_address='auto'"], "set only with simulation.backend = 'ray'"),
    (["simulation.backend=ray", "simulation.ray_address='not an address'"], "expected ''"),
])
def test_ray_settings_are_checked(sets, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, sets)
