"""Central DP's noise is secret: nothing a client or a view user can read regenerates it.

The run seed is public (every client's config holds it, the view serves it). The noise comes from a
key drawn from the OS that only the server's checkpoint (mode 0600) holds.
"""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from cohort.aggregation import process
from cohort.cli import main
from cohort.core.arrays import clip_to, load_safetensors
from cohort.core.seeding import Stage, rng
from cohort.core.types import ClientUpdate, RoundContext
from cohort.privacy import central_dp
from cohort.privacy.central import _secret_rng
from cohort.server import checkpoint
from cohort.tracking.view.snapshot import RunReader

SEED, ROUND, Z, CLIP, M = 1234, 3, 1.0, 0.5, 5


def released_round():
    """One DP round: the released mean, the true mean of the clipped updates, the mechanism's state."""
    agg = process(privacy=central_dp(Z, CLIP))
    start = {"w": np.zeros(2000, np.float64)}
    g = np.random.default_rng(0)
    updates = [ClientUpdate(c, {"w": g.normal(0, 1, 2000)}, 1.0, 10) for c in range(M)]
    new, state = agg.aggregate(start, agg.init(start), updates, RoundContext(ROUND, SEED, M, 100))
    true_mean = sum(clip_to(u.delta, CLIP)[0]["w"] for u in updates) / M
    return new["w"], true_mean, state


def test_subtracting_noise_regenerated_from_the_run_seed_does_not_unmask_the_mean():
    released, true_mean, state = released_round()
    std = Z * CLIP
    # the attack on the old scheme: regenerate the sum's noise from the public (seed, round) stream
    guess = rng(SEED, ROUND, Stage.DP_NOISE).normal(0.0, std, released.shape)
    error = released - guess / M - true_mean
    assert np.abs(error).max() > 0.1 * std / M  # the guess is no better than none: the noise is still there
    assert error.std() == pytest.approx(np.sqrt(2) * std / M, rel=0.1)  # two independent noises now
    # the positive control: whoever holds the checkpoint's key does remove it, to the last bit of rounding
    key = state.privacy.key
    exact = _secret_rng(key, ROUND, Stage.DP_NOISE).normal(0.0, std, released.shape)
    assert np.abs(released - exact / M - true_mean).max() < 1e-12


def test_nothing_a_client_or_view_user_reads_holds_the_noise_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COHORT_INSECURE_NOISE_KEY", raising=False)
    code = main(["run", "--out", str(tmp_path), "--no-progress", "--set", "rounds=3", "--set", "privacy.mode=central",
                 "--set", "privacy.noise_multiplier=0.8", "--set", "privacy.clip=0.5"])
    assert code == 0
    logs = capsys.readouterr()
    (folder,) = tmp_path.iterdir()
    found = checkpoint.load(folder / "checkpoints")
    key = found.state.steps["model"].privacy.key
    assert len(key) == 64
    # the checkpoint holds it, readable by the server's own user only
    ckpts = folder / "checkpoints"
    assert stat.S_IMODE(ckpts.stat().st_mode) == 0o700
    for f in ckpts.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # nothing else does: every other file of the run folder, the logs, and what the view serves
    public = [f for f in folder.rglob("*") if f.is_file() and ckpts not in f.parents]
    assert any(f.name == "config.toml" for f in public) and any(f.name == "metrics.jsonl" for f in public)
    for f in public:
        assert key.encode() not in f.read_bytes(), f
    assert key not in logs.out + logs.err
    reader = RunReader(folder)
    reader.refresh()
    view = json.dumps(reader.snapshot())
    assert key not in view and "dp_epsilon" in view
    assert "noise under a secret key" in logs.out and "TEST MODE" not in logs.out


def test_two_runs_draw_different_noise_and_the_test_mode_says_so_loudly(tmp_path, capsys, monkeypatch):
    sets = ["--set", "rounds=2", "--set", "privacy.mode=central", "--set", "privacy.clip=0.5", "--no-progress"]
    models = []
    for name, key in (("a", None), ("b", None), ("c", "k"), ("d", "k")):
        if key is None:
            monkeypatch.delenv("COHORT_INSECURE_NOISE_KEY", raising=False)
        else:
            monkeypatch.setenv("COHORT_INSECURE_NOISE_KEY", key)
        assert main(["run", "--out", str(tmp_path), "--set", f"name={name}", *sets]) == 0
        (folder,) = tmp_path.glob(f"{name}-*")
        models.append(b"".join(a.tobytes() for a in load_safetensors(folder / "model.safetensors").values()))
    out = capsys.readouterr().out
    assert models[0] != models[1]  # the same public seed, different secret keys
    assert models[2] == models[3]  # the reproducible test mode
    assert "TEST MODE" in out and "COHORT_INSECURE_NOISE_KEY" in out
