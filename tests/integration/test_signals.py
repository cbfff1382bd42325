"""SIGTERM (kill, docker stop, systemd, Slurm) stops a run like Ctrl-C: the finished rounds, a
loadable model and a summary are kept, the exit code is 143, and no worker process is left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cohort.core.arrays import load_safetensors


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent to reap it is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("backend", ["inprocess", "processes"])
def test_sigterm_keeps_the_run_and_leaves_no_workers(backend, tmp_path):
    sets = ["rounds=100000", "name=term"]
    if backend == "processes":
        sets += ["simulation.backend=processes", "simulation.workers=2"]
    args = [sys.executable, "-m", "cohort.cli", "run", "--out", str(tmp_path), "--no-progress", "--quiet"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("term-*/checkpoints/round-00000003.json")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        workers = [p for c in children(proc.pid) for p in [c, *children(c)]]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    (folder,) = tmp_path.glob("term-*")
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["stopped_by"] == "terminated" and summary["rounds_completed"] == len(records) >= 3
    model = load_safetensors(folder / "model.safetensors")
    assert model and (folder / "model.pt").exists()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)]


def test_ctrl_c_with_worker_processes_prints_one_line(tmp_path):
    """Ctrl-C reaches the whole process group: the parent stops, the workers say nothing."""
    args = [sys.executable, "-m", "cohort.cli", "run", "--out", str(tmp_path), "--no-progress", "--quiet",
            "--set", "rounds=100000", "--set", "name=int", "--set", "simulation.backend=processes",
            "--set", "simulation.workers=2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("int-*/checkpoints/round-00000002.json")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted;"), err
    (folder,) = tmp_path.glob("int-*")
    assert json.loads((folder / "summary.json").read_text())["stopped_by"] == "interrupted"
