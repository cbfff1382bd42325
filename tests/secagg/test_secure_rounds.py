"""Secure aggregation in whole rounds: the model equals unweighted FedAvg's within the fixed-point
resolution, the same bits in-process and in the process pool, dropouts fail only themselves while t
survive, too few give a skipped round with the reason, it composes with FedProx and central DP, and
no per-client update or protocol secret is written to the run folder."""

import json

import numpy as np
import pytest

from cohort.client.base import Hooks, as_trainer
from cohort.config import load_config
from cohort.core.arrays import load_safetensors
from cohort.core.errors import ConfigError
from cohort.experiment import build, run
from cohort.server import checkpoint

BASE = ["rounds=3", "output.progress=false"]


def final(tmp_path, *sets, name="x"):
    result = run(load_config(None, [*BASE, f"output.dir={tmp_path}", f"name={name}", *sets]))
    return result, load_safetensors(result.folder / "model.safetensors")


def test_secure_rounds_equal_unweighted_fedavg_within_the_encoding_resolution(tmp_path):
    sa, secure = final(tmp_path, "secagg.mode=secagg", name="secure")
    _, plain = final(tmp_path, "server.weighted=false", name="plain")
    assert sa.state.round == 3 and all(r["clients_succeeded"] == 10 for r in sa.state.history)
    # per round the sum of 10 deltas is off by at most 10 steps of 2 / (2^28 - 1): far below 1e-6
    for k in plain:
        assert np.abs(secure[k].astype(np.float64) - plain[k]).max() < 1e-6


def test_the_same_bits_in_process_and_in_the_process_pool(tmp_path):
    _, here = final(tmp_path, "secagg.mode=secagg+", "secagg.degree=6", name="here")
    _, pool = final(tmp_path, "secagg.mode=secagg+", "secagg.degree=6", "simulation.backend=processes",
                    "simulation.workers=2", name="pool")
    for k in here:
        assert here[k].tobytes() == pool[k].tobytes(), k  # masks are random, but they cancel exactly


def test_no_per_client_update_or_secret_reaches_the_run_folder(tmp_path):
    result, _ = final(tmp_path, "secagg.mode=secagg", name="scan")
    exp = build(load_config(None, [*BASE, "secagg.mode=secagg"]))
    start = exp.initial_state().model
    needles = []
    for cid in range(10):  # each client's round-1 update, as it computed it
        trainer = as_trainer(exp.client_fn()(cid))
        delta = trainer.train(start, {"round": 1, "seed": 0, "version": 0}, Hooks()).delta
        for a in delta.values():
            if a.size >= 4:
                needles += [a.astype(np.float32).tobytes()[:64], a.astype(np.float64).tobytes()[:64]]
    blobs = {p: p.read_bytes() for p in result.folder.rglob("*") if p.is_file()}
    assert any(p.suffix == ".safetensors" for p in blobs) and len(blobs) >= 6
    for path, blob in blobs.items():
        for needle in needles:
            assert needle not in blob, f"a client's update is in {path}"
    # the positive control: the same scan finds what is written (the final global model)
    model = load_safetensors(result.folder / "model.safetensors")
    assert any(next(iter(model.values())).tobytes()[:64] in blob for blob in blobs.values())
    latest = checkpoint.load(result.folder / "checkpoints")
    assert latest.clients == {}  # and the clients' protocol secrets were forgotten at the end of the round
    records = [json.loads(line) for line in (result.folder / "metrics.jsonl").read_text().splitlines()]
    # of the protocol the records hold only which protection was on (secagg_mode, ...), never its bytes
    named = ("secagg_mode", "update_bound")  # the protections on: secagg, and the clients' own clip as the bound
    assert all(r["update_bound"] == "secagg" for r in records)
    assert not any("secagg" in json.dumps({k: v for k, v in r.items() if k not in named}).replace('"secagg_', "")
                   for r in records)
    # clients.jsonl has each client's part of each round: that it took part, and nothing it computed
    # (examples, metrics, seconds: tests/secagg/test_secagg_honesty.py)
    rows = [json.loads(line) for line in (result.folder / "clients.jsonl").read_text().splitlines()]
    fit = [r for r in rows if r["task"] == "fit"]
    assert sorted((r["round"], r["client"]) for r in fit) == [(r, c) for r in (1, 2, 3) for c in range(10)]
    assert all(r["status"] == "ok" and set(r) == {"round", "client", "task", "status"} for r in fit)


def test_dropouts_fail_themselves_and_too_many_skip_the_round(tmp_path):
    sets = ["secagg.mode=secagg", "secagg.threshold=0.8"]
    result, _ = final(tmp_path, *sets, "rounds=1", name="ok")
    assert result.state.history[-1]["status"] == "ok"
    # client code that crashes in fit: with 10 clients and t = 8, three failing ones skip the round
    from cohort import experiment

    class Crashing:
        def __init__(self, fn, bad):
            self.fn, self.bad = fn, bad

        def __call__(self, cid):
            client = self.fn(cid)
            if cid in self.bad:
                client.train = lambda *a: (_ for _ in ()).throw(RuntimeError("disk on fire"))
            return client

    exp = build(load_config(None, [*BASE, *sets, "rounds=1", f"output.dir={tmp_path}", "server.max_failed_rounds=1"]))
    for bad, stands in (({1, 2}, True), ({1, 2, 3}, False)):
        fn = exp.client_fn()
        object.__setattr__(exp, "client_fn", lambda fn=fn, bad=bad: Crashing(fn, bad))
        try:
            r = experiment.run(exp.config, experiment=exp, write=False)
            record = r.state.history[-1]
        except Exception as e:  # RoundFailed after max_failed_rounds = 1
            record = e.state.history[-1]
        assert (record["status"] == "ok") == stands
        assert record["clients_succeeded"] == (10 - len(bad) if stands else 0)
        assert sum("disk on fire" in f for f in record["failures"]) == len(bad)
        if not stands:
            assert "secure aggregation" in record["aggregate_error"] and "t = 8" in record["aggregate_error"]


def test_it_composes_with_fedprox_and_central_dp(tmp_path):
    result, _ = final(tmp_path, "secagg.mode=secagg", "server.algorithm=fedprox", "privacy.mode=central",
                      "privacy.noise_multiplier=0.5", "privacy.clip=0.5", name="dp")
    last = result.state.history[-1]
    assert last["status"] == "ok" and last["dp_epsilon"] > 0 and last["dp_clip"] == 0.5


@pytest.mark.parametrize("sets, why", [
    (["secagg.mode=secagg", "server.algorithm=scaffold"], "also sends ['control'] back"),
    (["secagg.mode=secagg", "server.aggregator=median"], "sees only the sum"),
    (["secagg.mode=secagg", "server.policy=fedbuff", "fedbuff.concurrency=4", "fedbuff.buffer_size=2"], "synchronous rounds"),
    (["secagg.mode=secagg+", "secagg.degree=1"], "secagg.degree is 1"),
    (["secagg.mode=secagg", "privacy.mode=central", "privacy.adaptive_clip=true"], "adaptive_clip cannot run"),
    (["secagg.mode=sometimes"], "secagg.mode is 'sometimes'"),
    (["secagg.mode=secagg", "secagg.clip_range=0"], "secagg.clip_range is 0"),
])
def test_what_cannot_work_is_refused_at_start(sets, why):
    with pytest.raises(ConfigError) as e:
        build(load_config(None, sets))
    assert why in str(e.value)


def test_secure_aggregation_is_a_round_protocol_composed_into_the_algorithm():
    """with_secure_aggregation composes a round protocol (Algorithm.rounds); the policy, the loop and the
    experiment call it and name no protocol, and the plain algorithm is left as it was."""
    import dataclasses
    import inspect

    from cohort import fedavg
    from cohort.core.errors import ConfigError
    from cohort.secagg.rounds import SecureRounds
    from cohort.secagg.settings import SecureAggregation, with_secure_aggregation
    from cohort.server import loop, policies

    plain = fedavg()
    secure = with_secure_aggregation(plain, SecureAggregation(threshold=0.6))
    assert plain.rounds is None and isinstance(secure.rounds, SecureRounds)
    assert "secure" not in {f.name for f in dataclasses.fields(secure)}
    assert secure.rounds.records_clients is False and secure.rounds.settings.threshold == 0.6
    with pytest.raises(ConfigError, match="at least 2 clients per round"):
        loop.check_protections(secure, cohort_settings(), size=1)
    with pytest.raises(ConfigError, match="secure aggregation runs synchronous rounds"):
        loop.check_protections(secure, cohort_settings(over_selection=0.5))
    for module in (loop, policies):
        assert "secagg" not in inspect.getsource(module), module.__name__


def cohort_settings(**kw):
    import cohort

    return cohort.LoopSettings(rounds=1, **kw)
