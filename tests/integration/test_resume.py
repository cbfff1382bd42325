"""Resume: a run SIGKILLed in the middle of a round and resumed ends byte-identical to one that was
never stopped (global arrays), with the same metrics apart from timings; a damaged latest checkpoint
falls back to the one before it."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cohort.core.arrays import load_safetensors
from cohort.server import checkpoint

ROUNDS = 10
SETUPS = {
    "fedavgm": ["server.momentum=0.9"],
    "fedadam": ["server.optimizer=adam", "server.lr=0.05"],  # its moments come back from the checkpoint
    "scaffold": ["server.algorithm=scaffold"],
    # the personal models (client state) come back: the held-out personal scores after resuming are the same
    "ditto": ["server.algorithm=ditto", "ditto.lam=0.3"],
    "fedper": ["server.algorithm=fedper", "model.name=mlp", "evaluate.centralized=false"],
    "fedbuff": ["server.policy=fedbuff", "fedbuff.buffer_size=3", "fedbuff.concurrency=5", "simulation.speed_spread=4"],
    # the noise, the adaptive clip and ε (the accountant's ledger) all come back from the checkpoint
    "central_dp": ["privacy.mode=central", "privacy.noise_multiplier=0.8", "privacy.clip=0.3", "privacy.adaptive_clip=true"],
}
BACKENDS = {"inprocess": [], "processes": ["simulation.backend=processes", "simulation.workers=2"]}
# Each setup with the backends where its resume can differ: the server's own state (momentum, Adam's
# moments, the DP ledger) lives in the server process whatever the backend, so those run in-process;
# client state (SCAFFOLD's cᵢ, personal models) and FedBuff's work in flight also cross the worker pool.
CASES = [(setup, "inprocess") for setup in ("fedavgm", "fedadam", "central_dp")] + [
    (setup, "processes") for setup in ("scaffold", "ditto", "fedper", "fedbuff")]  # FedBuff's work in flight: across the pool
TIMINGS = {"seconds", "fit_seconds", "aggregate_seconds", "evaluate_seconds"}


def cohort_cmd(*args):
    return [sys.executable, "-m", "cohort.cli", *args]


NOISE_KEY = {"COHORT_INSECURE_NOISE_KEY": "test-resume"}  # both runs draw the same DP noise (the test mode)


def start(out: Path, name: str, sets: list[str]):
    args = ["run", "--out", str(out), "--no-progress", "--quiet", "--set", f"rounds={ROUNDS}", "--set", f"name={name}"]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(cohort_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **NOISE_KEY})


def folder_of(out: Path, name: str) -> Path:
    (found,) = out.glob(f"{name}-*")
    return found


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def records(folder: Path):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def client_rows(folder: Path):
    lines = (folder / "clients.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One uninterrupted in-process run per algorithm setup."""
    out = tmp_path_factory.mktemp("reference")
    refs = {}
    for setup, sets in SETUPS.items():
        finish(start(out, setup, sets))
        refs[setup] = folder_of(out, setup)
    return refs


def wait_for_checkpoint(folder_glob, out: Path, name: str, round_: int, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(out.glob(f"{name}-*/checkpoints/round-{round_:08d}.json"))
        if found:
            return found[0].parents[1]
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint of round {round_} within {timeout}s")


def test_every_setup_is_resumed_on_some_backend_and_both_backends_are_used():
    assert {s for s, _ in CASES} == set(SETUPS) and {b for _, b in CASES} == set(BACKENDS)


@pytest.mark.parametrize("setup,backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_sigkill_then_resume_is_byte_identical(setup, backend, references, tmp_path):
    rng = random.Random(f"{setup}-{backend}")
    k = rng.randint(2, ROUNDS - 3)
    proc = start(tmp_path, "killed", SETUPS[setup] + BACKENDS[backend])
    try:
        folder = wait_for_checkpoint(None, tmp_path, "killed", k, proc)
        time.sleep(rng.uniform(0, 0.03))  # somewhere inside round k + 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (folder / "summary.json").exists()  # it really died mid-run
    # without the test key: the resumed run's noise key comes from the checkpoint alone
    env = {k: v for k, v in os.environ.items() if k not in NOISE_KEY}
    resumed = subprocess.run(cohort_cmd("run", "--resume", str(folder), "--no-progress", "--quiet"),
                             capture_output=True, text=True, timeout=180, env=env)
    assert resumed.returncode == 0, resumed.stderr
    ref = references[setup]
    a, b = load_safetensors(ref / "model.safetensors"), load_safetensors(folder / "model.safetensors")
    assert list(a) == list(b)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name
    assert records(folder) == records(ref)  # no round lost or duplicated, metrics equal but for timings
    assert client_rows(folder) == client_rows(ref)  # the per-client rows too: none lost, none twice
    assert [r["round"] for r in records(folder)] == list(range(1, ROUNDS + 1))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds_completed"] == ROUNDS


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(references, tmp_path):
    ref = references["scaffold"]
    ckpts = ref / "checkpoints"
    latest = checkpoint.load(ckpts)
    assert latest.state.round == ROUNDS and latest.clients  # SCAFFOLD's cᵢ are in it
    copy = tmp_path / "ckpts"
    copy.mkdir()
    for f in ckpts.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    blob = copy / f"round-{ROUNDS:08d}.safetensors"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    found = checkpoint.load(copy)
    assert found.state.round == ROUNDS - 1
    assert "does not match its checksum" in found.skipped[0]
    (copy / f"round-{ROUNDS - 1:08d}.json").write_text("{not json")
    with pytest.raises(Exception, match="no usable checkpoint"):
        checkpoint.load(copy)


def test_resume_of_a_folder_without_checkpoints_says_so(tmp_path):
    (tmp_path / "config.toml").write_text('name = "x"\n')
    r = subprocess.run(cohort_cmd("run", "--resume", str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no usable checkpoint" in r.stderr


def test_checkpointed_state_round_trips_typed(references):
    found = checkpoint.load(references["fedbuff"] / "checkpoints")
    policy = found.state.policy
    assert type(policy).__name__ == "FedBuffState" and len(policy.in_flight) == 5
    assert all(type(w).__name__ == "InFlight" for w in policy.in_flight)
    steps = found.state.steps["model"]
    assert type(steps).__name__ == "AggregatorState"
    momentum = checkpoint.load(references["fedavgm"] / "checkpoints").state.steps["model"].server_optimizer
    assert type(momentum).__name__ == "SgdState" and all(isinstance(v, np.ndarray) for v in momentum.velocity.values())


def test_resume_refuses_a_changed_algorithm_and_accepts_more_rounds(references, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(references["fedavgm"], folder)
    r = subprocess.run(cohort_cmd("run", "--resume", str(folder), "--quiet", "--set", "server.algorithm=scaffold"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "server.algorithm: 'fedavg' -> 'scaffold'" in r.stderr and "Start a new run" in r.stderr
    r = subprocess.run(cohort_cmd("run", "--resume", str(folder), "--quiet", "--set", f"rounds={ROUNDS + 2}"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [rec["round"] for rec in records(folder)] == list(range(1, ROUNDS + 3))
    assert f"rounds = {ROUNDS + 2}" in (folder / "config.toml").read_text()


def test_a_checkpoint_of_another_algorithm_is_refused(references):
    from cohort.algorithms import scaffold
    from cohort.core.errors import ConfigError

    found = checkpoint.load(references["fedavgm"] / "checkpoints")
    with pytest.raises(ConfigError, match="do not fit algorithm 'scaffold'"):
        checkpoint.check_fits(found.state, scaffold())


def test_an_edited_checkpoint_falls_back_and_a_folder_in_use_is_refused(references, tmp_path):
    import shutil

    from cohort.tracking.run_folder import RunFolder

    folder = tmp_path / "run"
    shutil.copytree(references["fedavgm"], folder)
    latest = folder / "checkpoints" / f"round-{ROUNDS:08d}.json"
    latest.write_text(latest.read_text().replace('"seed": 0', '"seed": 7', 1))  # a hand edit of the state
    found = checkpoint.load(folder / "checkpoints")
    assert found.state.round == ROUNDS - 1 and "checksum" in found.skipped[0]
    holder = RunFolder.reopen(folder)  # another process holds the folder
    try:
        r = subprocess.run(cohort_cmd("run", "--resume", str(folder), "--quiet"), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "in use by another cohort process" in r.stderr
    finally:
        holder.release()


def test_resuming_a_run_that_reached_its_target_trains_nothing_more(tmp_path):
    args = ["run", "--out", str(tmp_path), "--quiet", "--set", "rounds=20", "--set", "evaluate.target=0.9",
            "--set", "name=tg"]
    first = subprocess.run(cohort_cmd(*args), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "stopped by target" in first.stdout, first.stderr
    (folder,) = tmp_path.glob("tg-*")
    before = records(folder)
    again = subprocess.run(cohort_cmd("run", "--resume", str(folder), "--quiet"), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "stopped by target" in again.stdout, again.stderr
    assert records(folder) == before
