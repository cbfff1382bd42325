"""What every simulation channel promises: read-only global arrays, replies in cohort order with a
bounded number held, and per-client state kept by the runtime (spilling to disk past its budget)."""

import numpy as np
import pytest
from fakes import ScriptedClients, Writer, start_arrays

import cohort
from cohort.client.store import ClientStateStore
from cohort.core.types import Instruction, Message
from cohort.server.loop import run
from cohort.server.state import initial_state


@pytest.mark.parametrize("backend", ["inprocess", "processes"])
def test_a_client_writing_into_its_arrays_cannot_change_the_global_model(backend):
    algorithm = cohort.fedavg()
    channel = cohort.simulation.make_channel(Writer(), algorithm, backend, workers=2)
    state = initial_state(algorithm, start_arrays(), 0)
    try:
        state, _ = run(state, algorithm=algorithm, channel=channel, num_clients=4, settings=cohort.LoopSettings(rounds=2))
    finally:
        channel.close()
    # every client tried to write 1e6 into w and was refused; the model moved by the deltas only
    np.testing.assert_array_equal(state.model["w"], [1.0, 1.0])
    assert state.history[-1]["train_wrote"] == 0.0


def test_the_pool_holds_a_bounded_number_of_replies_behind_a_straggler():
    slow = {0: 2.0}  # client 0 takes 20× as long as the others (0.1 s)
    channel = cohort.ProcessPoolChannel(Writer({**slow, **{c: 0.1 for c in range(1, 40)}}), workers=2)
    try:
        message = Message("fit", {"model": start_arrays()}, {"round": 1, "seed": 0})
        positions = [pos for pos, _ in channel.run(message, [Instruction(c, {}) for c in range(40)])]
    finally:
        channel.close()
    assert positions == list(range(40))  # in cohort order
    assert channel.window == 4 and 1 <= channel.max_held < channel.window  # never more than the window


def test_the_pool_yields_in_order_whatever_the_order_of_arrival():
    behaviours = {c: "ok" for c in range(6)}
    channel = cohort.ProcessPoolChannel(ScriptedClients(behaviours), workers=2)
    try:
        message = Message("fit", {"model": start_arrays()}, {"round": 1})
        out = list(channel.run(message, [Instruction(c, {}) for c in (5, 3, 1, 0, 2, 4)]))
    finally:
        channel.close()
    assert [pos for pos, _ in out] == list(range(6))
    assert [r.arrays["model"]["w"][0] for _, r in out] == [5, 3, 1, 0, 2, 4]


def test_the_store_spills_past_its_budget_and_reads_back_what_it_spilled(tmp_path):
    store = ClientStateStore(max_memory_bytes=3 * 800, spill_dir=tmp_path)
    states = {c: {"control": {"w": np.full(100, c, np.float64)}} for c in range(10)}  # 800 bytes each
    for c, s in states.items():
        store.put(c, s)
    assert store.nbytes_in_memory <= 3 * 800 and len(store) == 10
    assert len(list(tmp_path.glob("*.safetensors"))) == 7
    for c in (0, 9, 4):
        np.testing.assert_array_equal(store.get(c)["control"]["w"], states[c]["control"]["w"])
    assert store.nbytes_in_memory <= 3 * 800
    assert dict(store.items()).keys() == set(range(10))
    store.put(4, None)
    assert 4 not in store and len(store) == 9


def test_memory_of_the_store_grows_with_clients_that_have_state_not_with_the_population():
    store = ClientStateStore()
    store.put(123_456_789, {"control": {"w": np.zeros(4)}})
    assert len(store) == 1 and store.get(5) is None and store.nbytes_in_memory == 32


def test_a_pool_that_cannot_start_names_the_real_cause():
    channel = cohort.ProcessPoolChannel(lambda cid: None, workers=1)
    message = Message("fit", {"model": start_arrays()}, {"round": 1})
    with pytest.raises(cohort.TransportError, match="failed to start: .*must pickle") as info:
        list(channel.run(message, [Instruction(0, {})]))
    assert "within" not in str(info.value)
    channel.close()
