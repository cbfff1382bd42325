"""An app deployed: its settings and per-round records reach client processes from the server, a
client's context state lives in its process across rounds and across a server that is stopped and
resumed, and the run equals the simulation of the same app bit for bit."""

import json
import signal
import subprocess
import time

import pytest

from cohort.cli import main
from cohort.core.arrays import load_safetensors
from processes import ENV, TESTS, Federation, cohort, end_all, free_port

pytestmark = pytest.mark.slow
SETS = ["rounds=3", "server.fraction=1.0", "app.lr=0.25", "data.num_clients=2"]


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_deployed_app_equals_its_simulation(tmp_path, monkeypatch):
    monkeypatch.chdir(TESTS)
    assert main(["run", "--app", "counting_app:app", "--out", str(tmp_path / "sim"), "--quiet", "--no-progress",
                 *[a for s in SETS for a in ("--set", s)]]) == 0
    (sim,) = (tmp_path / "sim").glob("counting-*")
    with Federation(tmp_path / "dep", SETS, ("--app", "counting_app:app", "--min-clients", "2")) as fed:
        clients = [fed.client(c, "--app", "counting_app:app", "--name", f"client-{c}") for c in range(2)]
        fed.wait()
        for c in clients:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0, err
    (dep,) = (tmp_path / "dep").glob("counting-*")
    keep = ("round", "distance", "train_lr", "train_scale", "train_rounds", "train_seen_sum", "train_name_ok")
    assert [{k: r[k] for k in keep} for r in records(dep)] == [{k: r[k] for k in keep} for r in records(sim)]
    assert [r["train_rounds"] for r in records(dep)] == [1.0, 2.0, 3.0]  # kept in each client's process
    assert load_safetensors(dep / "model.safetensors")["w"].tobytes() == load_safetensors(sim / "model.safetensors")["w"].tobytes()


def test_client_state_outlives_a_paused_server(tmp_path):
    """SIGTERM pauses the server; its clients wait, reconnect to the resumed server, and go on counting
    from the state in their process (a round cut by the pause is run again: its clients may count it twice)."""
    port = free_port()
    sets = ["rounds=6", "server.fraction=1.0", "data.num_clients=2", "app.sleep=0.3"]
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        server = subprocess.Popen(cohort("server", "--app", "counting_app:app", "--address", address, "--out",
                                         str(tmp_path), "--quiet", *[a for s in sets for a in ("--set", s)]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)
        procs.append(server)
        clients = [subprocess.Popen(cohort("client", "--server", address, "--id", str(c), "--retry-s", "60",
                                           "--app", "counting_app:app"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)
                   for c in range(2)]
        procs += clients
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("counting-*/checkpoints/round-00000003.json")):
            assert time.monotonic() < deadline and server.poll() is None, server.stderr.read()
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
        assert server.returncode == 143, err
        (folder,) = tmp_path.glob("counting-*")
        resumed = subprocess.run(cohort("server", "--address", address, "--resume", str(folder), "--quiet"),
                                 capture_output=True, text=True, timeout=120, env=ENV, cwd=TESTS)
        assert resumed.returncode == 0, resumed.stderr
        for c in clients:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0 and "done (the run has ended)" in out, err
    finally:
        end_all(procs)
    rs = records(folder)
    assert [r["round"] for r in rs] == [1, 2, 3, 4, 5, 6]
    counts = [r["train_rounds"] for r in rs]
    assert counts[:3] == [1.0, 2.0, 3.0]
    assert all(b > a for a, b in zip(counts, counts[1:])) and counts[3] >= 4.0, counts  # never back to 1
    assert (folder / "app.txt").read_text().strip() == "counting_app:app"  # the resume found the app by itself
