"""In-process and process-pool channels: one reply per client, failures as values, deadlines,
dead workers, and bit-identical results between the two backends."""

import time

import numpy as np
import pytest
import torch
from fakes import ScriptedClients, dropout_mlp, start_arrays

from cohort.algorithms import fedavg
from cohort.channel import InProcessChannel, ProcessPoolChannel
from cohort.client.torch import TorchClientFactory, TrainSettings, initial_arrays
from cohort.core.types import ClientFailure, Instruction, Message, Reply
from cohort.data import ArrayDataset, dirichlet, split_holdout
from cohort.server.loop import LoopSettings, run
from cohort.server.state import initial_state


def instructions(n):
    return [Instruction(c, {}) for c in range(n)]


def fit(arrays=None, config=None):
    return Message("fit", {"model": arrays or start_arrays()}, config or {"round": 1, "seed": 0})


def by_position(replies):
    return dict(replies)


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolChannel(ScriptedClients({2: "raise", 3: "sleep", 4: "exit", 5: "sysexit"}), workers=2) as channel:
        yield channel


def test_pool_returns_one_reply_per_client_with_failures_as_values(pool):
    replies = by_position(pool.run(fit(), instructions(3)))
    assert sorted(replies) == [0, 1, 2]
    assert isinstance(replies[1], Reply) and replies[1].num_examples == 2
    assert isinstance(replies[2], ClientFailure) and "client 2 broke" in replies[2].reason


def test_a_client_calling_sys_exit_fails_alone(pool):
    replies = by_position(pool.run(fit(), [Instruction(c, {}) for c in (5, 1)], timeout_s=60))
    assert isinstance(replies[0], ClientFailure) and "SystemExit" in replies[0].reason
    assert isinstance(replies[1], Reply)


def test_pool_start_up_does_not_count_against_the_deadline():
    channel = ProcessPoolChannel(ScriptedClients(), workers=2)  # spawning and importing take seconds
    try:
        replies = by_position(channel.run(fit(), instructions(4), timeout_s=1.0))
        assert all(isinstance(r, Reply) for r in replies.values())
    finally:
        channel.close()


def test_pool_deadline_fails_the_straggler_and_recovers(pool):
    ins = [Instruction(c, {"round": 1}) for c in (0, 3, 1)]
    started = time.monotonic()
    replies = by_position(pool.run(fit(), ins, timeout_s=3.0))
    assert time.monotonic() - started < 15
    assert isinstance(replies[1], ClientFailure) and replies[1].stage == "timeout" and replies[1].client_id == 3
    assert isinstance(replies[0], Reply) and isinstance(replies[2], Reply)
    again = by_position(pool.run(fit(), instructions(2)))  # a fresh pool serves the next call
    assert all(isinstance(r, Reply) for r in again.values())


def test_pool_survives_a_worker_that_dies(pool):
    ins = [Instruction(c, {"round": 1}) for c in (4, 0)]
    replies = by_position(pool.run(fit(), ins, timeout_s=60))
    assert isinstance(replies[0], ClientFailure) and "worker process failed" in replies[0].reason
    again = by_position(pool.run(fit(), instructions(2), timeout_s=60))
    assert all(isinstance(r, Reply) for r in again.values())


def test_in_process_deadline_skips_clients_not_started_in_time():
    class Slow(ScriptedClients):
        def __call__(self, cid):
            time.sleep(0.3)
            return super().__call__(cid)

    replies = by_position(InProcessChannel(Slow()).run(fit(), instructions(5), timeout_s=0.5))
    assert isinstance(replies[0], Reply)
    assert isinstance(replies[4], ClientFailure) and replies[4].stage == "timeout"


def run_backend(channel, num_clients, seed=0):
    algorithm = fedavg()
    state = initial_state(algorithm, initial_arrays(dropout_mlp, seed), seed)
    with torch.random.fork_rng():
        state, _ = run(state, algorithm=algorithm, channel=channel, num_clients=num_clients,
                              settings=LoopSettings(rounds=3, fraction=0.5, federated_fraction=0.5))
    channel.close()
    return state


def test_in_process_and_process_pool_give_identical_global_arrays():
    g = np.random.default_rng(0)
    x = g.normal(size=(600, 12)).astype(np.float32)
    y = (x[:, :3].argmax(axis=1)).astype(np.int64)
    ds = ArrayDataset(x, y, "classification", 3)
    train, held = split_holdout(dirichlet(y, 12, seed=0, alpha=0.5), 0.2, seed=0)
    factory = TorchClientFactory(dropout_mlp, ds, train, held, settings=TrainSettings(epochs=2, batch_size=8, lr=0.1))
    a = run_backend(InProcessChannel(factory, threads=1), 12)
    b = run_backend(ProcessPoolChannel(factory, workers=2, threads=1), 12)
    assert a.round == b.round == 3
    for k in a.model:
        assert a.model[k].tobytes() == b.model[k].tobytes(), k
    assert not np.array_equal(a.model["0.weight"], initial_arrays(dropout_mlp, 0)["0.weight"])
    for ra, rb in zip(a.history, b.history):
        assert ra["train_loss"] == rb["train_loss"] and ra["federated_loss"] == rb["federated_loss"]
