"""Local DP in the PyTorch client: the update leaves clipped and with noise of the configured
standard deviation, drawn from the operating system (the run's seed cannot regenerate it), each
client reports its cumulative (ε, δ), equal to dp-accounting's Gaussian mechanism composed over its
updates, and the server's config cannot switch it off."""

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from cohort.client.base import Hooks
from cohort.client.settings import TrainSettings
from cohort.config import load_config
from cohort.core.arrays import clip_to, flatten
from cohort.core.errors import ConfigError
from cohort.experiment import build, run

LDP = ["client.ldp=true", "client.ldp_clip=0.5", "client.ldp_noise_multiplier=0.8", "output.progress=false"]


def test_the_update_leaves_clipped_with_noise_of_the_configured_std():
    honest = build(load_config(None, []))
    private = build(load_config(None, LDP))
    start = honest.initial_state().model
    config = {"round": 1, "seed": 0}
    truth = flatten(clip_to(honest.client_fn()(3).train(start, config, Hooks()).delta, 0.5)[0])
    noise = np.concatenate([flatten(private.client_fn()(3).train(start, config, Hooks()).delta) - truth
                            for _ in range(300)])
    expected = 0.8 * 0.5
    assert abs(noise.std() - expected) < 4 * expected / np.sqrt(2 * noise.size)
    assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)


def test_each_client_reports_its_cumulative_epsilon_and_the_seed_cannot_remove_the_noise(tmp_path):
    runs = [run(load_config(None, [*LDP, "rounds=3", f"output.dir={tmp_path}", f"name=r{i}"]), write=False) for i in range(2)]
    history = runs[0].state.history
    for r, h in enumerate(history, start=1):  # every client takes part every round in the demo
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.8 / 2), r)
        expected = rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
        assert h["train_ldp_epsilon_max"] == pytest.approx(expected, rel=1e-12)
        assert h["train_ldp_epsilon"] == pytest.approx(expected, rel=1e-12)
    a, b = (r.state.model for r in runs)
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # same seed, other noise: OS entropy


def test_the_accounting_facts_are_a_record_of_their_own_that_never_leaves_the_client():
    """The trainer's raw facts (local DP's multiplier and δ) travel beside its metrics, not in them; the
    client's accounting turns them into ε and the runtime sends neither them nor an empty record."""
    from cohort.channel.runtime import run_client
    from cohort.core.types import MODEL, Message, Reply

    private = build(load_config(None, LDP))
    start = private.initial_state().model
    trained = private.client_fn()(3).train(start, {"round": 1, "seed": 0}, Hooks())
    assert set(trained.facts) == {"ldp_noise_multiplier", "ldp_delta"} and not set(trained.facts) & set(trained.metrics)
    reply, state = run_client(private.client_fn(), private.algorithm.client, 3,
                              Message("fit", {MODEL: start}, {"round": 1, "seed": 0}), None)
    assert isinstance(reply, Reply) and reply.facts == {}
    assert "ldp_epsilon" in reply.metrics and "ldp_noise_multiplier" not in reply.metrics
    assert int(state["ldp"]["updates"][0]) == 1  # the ledger is the client's own state


def test_the_server_cannot_switch_it_off_and_bad_settings_are_refused():
    s = TrainSettings(ldp=True, ldp_clip=0.5)
    assert s.override({"ldp": False, "ldp_clip": 100.0}) == s
    for sets, why in ((["client.ldp_clip=0"], "client.ldp_clip is 0"), (["client.ldp_delta=0"], "client.ldp_delta is 0"),
                      (["server.algorithm=scaffold"], "also sends 'control'.*which would leave unprotected")):
        with pytest.raises(ConfigError, match=why):
            build(load_config(None, [*LDP, *sets]))
