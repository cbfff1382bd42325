"""The round loop with scripted clients: golden FedAvg, failures as values, the failure policy,
targets, federated evaluation, traffic, and order-independence."""

import numpy as np
import pytest
from fakes import ScriptedClients, start_arrays

from cohort.algorithms import fedavg
from cohort.channel import InProcessChannel
from cohort.core.arrays import nbytes
from cohort.core.errors import ConfigError, RoundFailed
from cohort.server.loop import LoopSettings, Target, run
from cohort.server.state import initial_state


def start_state(algorithm, seed=0):
    return initial_state(algorithm, start_arrays(), seed)


def go(behaviours=None, *, num_clients=4, algorithm=None, channel=None, evaluate=None, **settings):
    algorithm = algorithm or fedavg()
    settings = LoopSettings(**{"rounds": 1, "fraction": 1.0, **settings})
    channel = channel or InProcessChannel(ScriptedClients(behaviours), algorithm.client)
    return run(start_state(algorithm), algorithm=algorithm, channel=channel, num_clients=num_clients,
                      settings=settings, evaluate=evaluate)


def test_one_round_of_fedavg_by_hand():
    state, why = go()
    # clients 0..3 send w = [c, -c] with c + 1 examples: weighted mean c = (0·1 + 1·2 + 2·3 + 3·4) / 10 = 2
    np.testing.assert_allclose(state.model["w"], [2.0, -2.0])
    assert state.model["b"] == 1.0 and state.round == 1 and why == "rounds"
    record = state.history[0]
    assert record["clients_sampled"] == 4 and record["clients_succeeded"] == 4 and record["clients_failed"] == 0
    assert record["train_loss"] == pytest.approx(2.0)  # example-weighted mean of the clients' train_loss


def test_unweighted_mean():
    state, _ = go(algorithm=fedavg(weighted=False))
    np.testing.assert_allclose(state.model["w"], [1.5, -1.5])


def test_failing_and_malformed_clients_are_recorded_and_left_out():
    state, _ = go({1: "raise", 2: "nan", 3: "garbage", 4: "shape"}, num_clients=6)
    # only clients 0 and 5 count: (0·1 + 5·6) / 7
    np.testing.assert_allclose(state.model["w"], [30 / 7, -30 / 7], rtol=1e-6)
    record = state.history[0]
    assert record["status"] == "ok" and record["clients_succeeded"] == 2 and record["clients_failed"] == 4
    text = "\n".join(record["failures"])
    assert "client 1 (fit): RuntimeError: client 1 broke" in text
    assert "client 2 (validate)" in text and "non-finite" in text
    assert "client 3 (fit)" in text and "FitResult" in text
    assert "client 4 (validate)" in text and "shape" in text


def test_malformed_counts_and_evaluation_results_are_failures_not_crashes():
    state, _ = go({1: "badcount", 2: "zero"}, num_clients=4, federated_fraction=1.0)
    record = state.history[0]
    np.testing.assert_allclose(state.model["w"], [12 / 5, -12 / 5], rtol=1e-6)  # clients 0 and 3 only
    text = "\n".join(record["failures"])
    assert "client 1 (validate): update of client 1 has num_examples '7'" in text
    assert "client 2 (validate)" in text and "num_examples 0" in text
    assert "client 1 (validate): evaluation result has loss 'low'" in text
    # clients 0, 2, 3 evaluate: loss c with c + 1 examples
    assert record["federated_loss"] == pytest.approx((0 + 2 * 3 + 3 * 4) / 8)


def test_huge_counts_exits_and_odd_metrics_cannot_hurt_the_run():
    state, _ = go({1: "huge", 2: "sysexit", 3: "keys"}, num_clients=4)
    record = state.history[0]
    assert record["round"] == 1 and record["clients_succeeded"] == 2  # clients 0 and 3
    np.testing.assert_allclose(state.model["w"], [12 / 5, -12 / 5], rtol=1e-6)
    text = "\n".join(record["failures"])
    assert "client 1 (validate)" in text and "num_examples 1000" in text
    assert "client 2 (fit): SystemExit" in text
    assert record["train_accuracy"] == 1.0 and "accuracy" not in record  # a client's metric is never the loop's
    assert "train_big" not in record and "train_round" in record


def test_an_aggregate_that_overflows_the_model_is_refused():
    # each client moves w by 3e38: finite in float32, but no model has weights that large; never kept
    state, _ = go({0: "overflow", 1: "overflow"}, num_clients=2, rounds=3, max_failed_rounds=5)
    assert [r["status"] for r in state.history] == ["skipped", "skipped", "skipped"]
    assert "absurdly large" in state.history[0]["aggregate_error"]
    assert np.abs(state.model["w"]).max() < 1e9


def test_a_round_without_enough_updates_is_skipped_then_the_run_stops_with_its_state():
    all_fail = {c: "raise" for c in range(4)}
    with pytest.raises(RoundFailed, match=r"(?s)0 of 4 clients succeeded.*3 rounds in a row.*client 0 broke") as info:
        go(all_fail, rounds=5, max_failed_rounds=3)
    state = info.value.state
    assert state.round == 3 and [r["status"] for r in state.history] == ["skipped"] * 3
    np.testing.assert_array_equal(state.model["w"], start_arrays()["w"])  # untouched


def test_min_successful_clients_decides_whether_a_round_stands():
    state, _ = go({0: "raise", 1: "raise"}, rounds=2, min_successful_clients=3, max_failed_rounds=5)
    assert [r["status"] for r in state.history] == ["skipped", "skipped"] and state.failed_rounds == 2
    state, _ = go({0: "raise"}, rounds=2, min_successful_clients=3)
    assert [r["status"] for r in state.history] == ["ok", "ok"] and state.failed_rounds == 0


def test_impossible_policy_is_refused_before_any_round():
    with pytest.raises(ConfigError, match="min_successful_clients"):
        go(fraction=0.5, min_successful_clients=3)


def test_stops_when_the_target_is_reached():
    evaluate = lambda arrays: {"accuracy": float(arrays["b"]) / 10}  # b grows by 1 per round  # noqa: E731
    state, why = go(rounds=10, evaluate=evaluate, target=Target("accuracy", 0.3))
    assert why == "target" and state.round == 3
    assert [r["accuracy"] for r in state.history] == pytest.approx([0.1, 0.2, 0.3])


def test_centralized_evaluation_every_k_rounds_and_the_last():
    evaluate = lambda arrays: {"loss": 1.0}  # noqa: E731
    state, _ = go(rounds=5, evaluate=evaluate, evaluate_every=2)
    assert [r["round"] for r in state.history if "loss" in r] == [2, 4, 5]


def test_federated_evaluation_is_an_example_weighted_mean():
    state, _ = go({2: "raise"}, num_clients=4, federated_fraction=1.0)
    record = state.history[0]
    # clients 0, 1, 3 report loss c with c + 1 examples: (0·1 + 1·2 + 3·4) / 7
    assert record["federated_loss"] == pytest.approx(14 / 7)
    assert record["federated_accuracy"] == pytest.approx(0.1)
    assert any("client 2 (evaluate)" in f for f in record["failures"])


def test_cohort_sampling_is_seeded_and_sized():
    def cohorts(seed):
        algorithm = fedavg()
        seen = []

        class Spy(InProcessChannel):
            def run(self, message, instructions, timeout_s=None):
                seen.append(tuple(i.client_id for i in instructions))
                return super().run(message, instructions, timeout_s)

        run(start_state(algorithm, seed), algorithm=algorithm, channel=Spy(ScriptedClients()),
                   num_clients=50, settings=LoopSettings(rounds=3, fraction=0.1))
        return seen

    first = cohorts(seed=0)
    assert first == cohorts(seed=0)
    assert first != cohorts(seed=1)
    assert all(len(c) == 5 and len(set(c)) == 5 and list(c) == sorted(c) for c in first)
    assert len(set(first)) == 3  # a new cohort each round


def test_traffic_is_counted_per_round():
    state, _ = go({1: "raise"}, num_clients=4)
    record = state.history[0]
    assert record["bytes_sent"] == 4 * nbytes(start_arrays())
    assert record["bytes_received"] == 3 * nbytes(start_arrays())
    assert record["seconds"] > 0


def test_round_time_is_split_into_clients_aggregation_and_evaluation():
    import dataclasses
    import time

    base = fedavg()

    class SlowFold(type(base)):  # the server's own work made visible: each accepted update takes 20 ms to fold
        def add(self, accs, cid, reply):
            time.sleep(0.02)
            return super().add(accs, cid, reply)

    slow = SlowFold(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    state, _ = go(num_clients=4, algorithm=slow, rounds=2, evaluate=lambda a: (time.sleep(0.05), {"accuracy": 0.5})[1])
    assert len(state.history) == 2
    for record in state.history:
        assert record["aggregate_seconds"] >= 4 * 0.02 and record["evaluate_seconds"] >= 0.05
        assert 0 <= record["fit_seconds"] < record["aggregate_seconds"]  # the scripted clients are quick
        parts = record["fit_seconds"] + record["aggregate_seconds"] + record["evaluate_seconds"]
        assert abs(parts - record["seconds"]) < 0.01
