"""Compression of the update: 8-bit quantization is unbiased (a statistical test), fp16 rounds within
its precision, top-k with error feedback loses nothing over rounds (sent + residual = the sum of the
true updates), malformed compressed updates are refused, and a run sends exactly the bytes the
encoding says while the residual stays in each client's state."""

import json

import numpy as np
import pytest

from cohort.client.compression import RESIDUAL, compress, decompress
from cohort.config import load_config
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.experiment import build, run
from cohort.server import checkpoint

LIKE = {"w": np.zeros((20, 30), np.float32), "b": np.zeros(30, np.float32), "n": np.zeros((), np.int64)}


def update(seed):
    g = np.random.default_rng(seed)
    return {"w": g.normal(0, 1, (20, 30)).astype(np.float32), "b": g.normal(0, 0.1, 30).astype(np.float32),
            "n": np.array(3, np.int64)}


def test_8_bit_quantization_is_unbiased():
    u = update(0)
    g = np.random.default_rng(1)
    draws = 4000
    total = {k: np.zeros(a.shape) for k, a in u.items()}
    for _ in range(draws):
        sent, _ = compress(u, "int8", 1.0, g)
        assert sent["w"].dtype == np.uint8
        for k, a in decompress(sent, LIKE, "int8").items():
            total[k] += a
    for k in ("w", "b"):
        step = float(u[k].max() - u[k].min()) / 255
        err = total[k] / draws - u[k]
        # each draw's error is in (−step, step) with variance <= step²/4: the mean of 4000 is within 5 SE
        assert np.abs(err).max() < 5 * (step / 2) / np.sqrt(draws)
        assert abs(err.mean()) < 5 * (step / 2) / np.sqrt(draws * u[k].size)
    single = decompress(compress(u, "int8", 1.0, g)[0], LIKE, "int8")["w"]
    assert not np.array_equal(single, u["w"])  # one draw is rounded: it is the mean that is exact


def test_fp16_rounds_within_its_precision():
    u = update(2)
    sent, _ = compress(u, "fp16", 1.0, np.random.default_rng(0))
    assert sent["w"].dtype == np.float16 and sent["n"].dtype == np.int64
    back = decompress(sent, LIKE, "fp16")
    assert back["w"].dtype == np.float32
    np.testing.assert_allclose(back["w"], u["w"], rtol=2**-11, atol=1e-7)


def test_error_feedback_loses_nothing_over_rounds():
    g = np.random.default_rng(0)
    residual, sent_sum, true_sum = None, {k: 0.0 for k in LIKE}, {k: 0.0 for k in LIKE}
    for r in range(30):
        u = update(100 + r)
        sent, residual = compress(u, "topk", 0.05, g, residual)
        assert sent["w"].size == round(0.05 * 600) and sent["w"].dtype == np.float16
        assert sent["w::index"].dtype == np.uint16
        dense = decompress(sent, LIKE, "topk")
        for k in ("w", "b"):
            sent_sum[k] = sent_sum[k] + dense[k].astype(np.float64)
            true_sum[k] = true_sum[k] + u[k].astype(np.float64)
    for k in ("w", "b"):
        np.testing.assert_allclose(sent_sum[k] + residual[k], true_sum[k], rtol=0, atol=1e-9)
        assert np.abs(residual[k]).max() > 0  # something really was held back


@pytest.mark.parametrize("kind, broken", [
    ("fp16", {"w": np.zeros((20, 30), np.float32)}),
    ("int8", {"w::bounds": np.array([0.0, np.inf])}),
    ("int8", {"w::bounds": None}),
    ("topk", {"w::index": np.array([1, 600] + [1] * 28, np.uint16)}),  # past the end
    ("topk", {"w::index": np.array([1, 0] + [1] * 28, np.uint16)}),  # the same index twice
    ("topk", {"w::index": np.arange(1, 31, dtype=np.int32)}),  # not uint16
])
def test_malformed_compressed_updates_are_refused(kind, broken):
    sent, _ = compress(update(3), kind, 0.05, np.random.default_rng(0))
    sent = {**sent, **broken}
    sent = {k: v for k, v in sent.items() if v is not None}
    with pytest.raises(UpdateRejected, match=f"a {kind}-compressed update does not decode"):
        decompress(sent, LIKE, kind)


def test_a_run_sends_the_encodings_bytes_and_keeps_the_residual_per_client(tmp_path):
    def last(kind, *extra):
        result = run(load_config(None, ["rounds=3", "output.progress=false", f"output.dir={tmp_path}", f"name={kind}",
                                        f"compression.kind={kind}", *extra]))
        records = [json.loads(x) for x in (result.folder / "metrics.jsonl").read_text().splitlines()]
        return result, records

    _, dense = last("none")
    _, half = last("fp16")
    topk, sparse = last("topk", "compression.topk_fraction=0.1")
    model = build(load_config(None, [])).initial_state().model  # the demo's logistic regression, float32
    sizes = [a.size for a in model.values()]
    assert dense[-1]["bytes_received"] == 10 * sum(sizes) * 4
    assert half[-1]["bytes_received"] == 10 * sum(sizes) * 2
    kept = sum(max(1, round(0.1 * n)) for n in sizes)  # per array, as float16 values and uint16 gaps
    assert sparse[-1]["bytes_received"] == 10 * kept * 4
    clients = checkpoint.load(topk.folder / "checkpoints").clients
    assert sorted(clients) == list(range(10)) and all(RESIDUAL in s for s in clients.values())
    assert abs(sparse[-1]["accuracy"] - dense[-1]["accuracy"]) < 0.1


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="compression.kind is 'zip'"):
        load_config(None, ["compression.kind=zip"])
    with pytest.raises(ConfigError, match="compression.topk_fraction"):
        load_config(None, ["compression.kind=topk", "compression.topk_fraction=0"])
    with pytest.raises(ConfigError, match="secure aggregation"):
        build(load_config(None, ["compression.kind=fp16", "secagg.mode=secagg"]))


def test_top_k_bridges_index_gaps_over_65535():
    like = {"w": np.zeros(200_000, np.float32)}
    delta = {"w": np.zeros(200_000, np.float32)}
    delta["w"][[3, 150_000, 199_999]] = [1.0, -2.0, 3.0]
    sent, residual = compress(delta, "topk", 3 / 200_000, np.random.default_rng(0))
    assert sent["w::index"].max() <= 65535 and sent["w"].size == 5  # two zero-valued bridges
    back = decompress(sent, like, "topk")["w"]
    np.testing.assert_array_equal(back, delta["w"])
    assert np.abs(residual["w"]).max() == 0


def test_a_bad_compression_setting_from_the_server_fails_that_client_as_a_value():
    from cohort.algorithms.fedavg import LocalSteps
    from cohort.channel.runtime import run_client
    from cohort.core.types import ClientFailure, Message
    from fakes import Constant

    message = Message("fit", {"model": {"w": np.zeros(1)}}, {"compression": {"kind": "topk", "topk_fraction": "lots"}})
    outcome, state = run_client(Constant(), LocalSteps(), 4, message, None)
    assert isinstance(outcome, ClientFailure) and outcome.client_id == 4 and "lots" in outcome.reason
    assert state is None



@pytest.mark.parametrize("algorithm", ["scaffold", "ditto"])
def test_algorithms_with_client_state_of_their_own_keep_the_residual_too(algorithm):
    """The residual lives beside the algorithm's own state (SCAFFOLD's cᵢ, Ditto's personal model), and
    error feedback holds round after round: sent + new residual = true update + previous residual."""
    from cohort.algorithms import ALGORITHMS
    from cohort.channel.runtime import run_client
    from cohort.core.types import MODEL, Message

    exp = build(load_config(None, ["data.num_clients=3", f"server.algorithm={algorithm}"]))
    half, client_fn = ALGORITHMS[algorithm]().client, exp.client_fn()
    groups = exp.initial_state().groups
    state = None
    for r in (1, 2, 3):
        plain = {"round": r, "seed": 0}
        true, _ = half.handle(Message("fit", groups, plain, 0), client_fn(0), state)
        reply, after = run_client(client_fn, half, 0, Message("fit", groups, {**plain, "compression": {
            "kind": "topk", "topk_fraction": 0.1}}, 0), state)
        assert RESIDUAL in after and len(after) == 2, (r, reply)
        sent = decompress(reply.arrays[MODEL], groups[MODEL], "topk")
        for k, d in true.arrays[MODEL].items():
            before = state[RESIDUAL][k] if state else 0.0
            np.testing.assert_allclose(sent[k] + after[RESIDUAL][k], d + before, rtol=1e-3, atol=1e-6)
        state = after


def test_compression_wraps_the_algorithm_as_a_decode_step_of_its_model_pipeline():
    """The protocol composes with the algorithm: a decode step on the model's pipeline and a config record
    for the clients; a malformed update is refused before validation and the round is left as it was."""
    import dataclasses

    from cohort import fedavg
    from cohort.client.compression import with_compression
    from cohort.core.types import MODEL, Reply, RoundContext

    plain = fedavg()
    algorithm = with_compression(plain, "int8")
    assert "compression" not in {f.name for f in dataclasses.fields(algorithm)}
    assert plain.aggregators[MODEL].decode is None and algorithm.aggregators[MODEL].decode is not None
    assert algorithm.config["compression"] == {"kind": "int8", "topk_fraction": 0.01}
    assert with_compression(plain, "none") is plain
    model = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in LIKE.items()}
    groups, steps = algorithm.init(model)
    accs = algorithm.start(groups, steps, RoundContext(1, 0, 2, 2))
    sent, _ = compress(update(1), "int8", 0.01, np.random.default_rng(0))
    accs = algorithm.add(accs, 0, Reply({MODEL: sent}, 10))
    with pytest.raises(UpdateRejected, match="int8-compressed update does not decode"):
        algorithm.add(accs, 1, Reply({MODEL: {**sent, "w": sent["w"][:3]}}, 10))
    new, _ = algorithm.finish(accs, groups, steps)
    expected = decompress(sent, model, "int8")
    np.testing.assert_allclose(new[MODEL]["w"], expected["w"], rtol=1e-6)
    with pytest.raises(ConfigError):
        with_compression(plain, "zip")
