"""Deployment over gRPC with real processes on 127.0.0.1: a server and client processes give the
same bits as the simulation (FedAvg, and SCAFFOLD whose cᵢ live in the client processes), a client
killed mid-round does not stop the round, and garbage on the port does not crash the server."""

import os
import random
import signal
import socket
import subprocess
import time

import pytest

from processes import ENV, TESTS, Federation, cohort, model_of, run_federation


SETUPS = {"fedavg": ["server.algorithm=fedavg"], "scaffold": ["server.algorithm=scaffold"],
          # the server clips and noises: the same seeded noise, the same ε, over gRPC as in simulation
          "fedavg+central_dp": ["privacy.mode=central", "privacy.noise_multiplier=0.5", "privacy.clip=0.2"],
          # four exchanges a round through the client processes; the masks cancel exactly, so the same bits
          "fedavg+secagg": ["secagg.mode=secagg"],
          # personal models live in the client processes; their held-out scores match the simulation's
          "ditto": ["server.algorithm=ditto", "ditto.lam=0.5"],
          "fedper": ["server.algorithm=fedper", "model.name=mlp", "evaluate.centralized=false"],
          # the other frameworks in client processes: Keras weights by variable path, scikit-learn's coef_/intercept_
          "keras": ["model.framework=keras", f"model.factory='{TESTS.parent / 'examples' / 'keras_models.py'}:binary_classifier'"],
          "sklearn": ["model.framework=sklearn", "model.name=sgd_classifier"]}


@pytest.mark.parametrize("setup", SETUPS)
def test_three_client_processes_give_the_simulations_bits(setup, tmp_path, monkeypatch):
    sets = ["data.num_clients=3", "rounds=4", *SETUPS[setup], "name=dep"]
    if "privacy.mode=central" in sets:  # the noise's key is secret: the test mode gives both runs the same one
        monkeypatch.setitem(ENV, "COHORT_INSECURE_NOISE_KEY", "deploy-equals-simulation")
        monkeypatch.setenv("COHORT_INSECURE_NOISE_KEY", "deploy-equals-simulation")
    out = run_federation(tmp_path, sets, clients=3)
    assert "stopped by rounds after 4 rounds" in out
    from cohort.cli import main  # the simulation in this process: the same code, one process start fewer

    assert main(["run", "--out", str(tmp_path), "--quiet", *[a for s in sets[:-1] + ["name=sim"] for a in ("--set", s)]]) == 0
    deployed, folder = model_of(tmp_path, "dep")
    simulated, _ = model_of(tmp_path, "sim")
    for k in simulated:
        assert deployed[k].tobytes() == simulated[k].tobytes(), k  # same seeds, same order: the same bits
    assert (folder / "checkpoints").is_dir()
    if "secagg.mode=secagg" in sets:  # no client's update reaches the server's run folder or its database
        import numpy as np

        from cohort.client.base import Hooks
        from cohort.config import load_config
        from cohort.experiment import build

        exp = build(load_config(None, sets[:-1]))
        start = exp.initial_state().model
        needles = [a.astype(np.float32).tobytes()[:64] for cid in range(3)
                   for a in exp.client_fn()(cid).train(start, {"round": 1, "seed": 0, "version": 0}, Hooks()).delta.values()
                   if a.size >= 4]
        blobs = {f: f.read_bytes() for f in folder.rglob("*") if f.is_file()}
        assert any(f.name == "server.sqlite" for f in blobs)
        assert not [f for f, blob in blobs.items() for n in needles if n in blob]
    if "ditto" in setup or "fedper" in setup:
        import json

        (sim_folder,) = tmp_path.glob("sim-*")
        scores = [[json.loads(line)["federated_personal_loss"] for line in (f / "metrics.jsonl").read_text().splitlines()]
                  for f in (folder, sim_folder)]
        assert scores[0] == scores[1] and len(scores[0]) == 4
    if "privacy.mode=central" in sets:
        import json

        (sim_folder,) = tmp_path.glob("sim-*")
        eps = [[json.loads(line)["dp_epsilon"] for line in (f / "metrics.jsonl").read_text().splitlines()]
               for f in (folder, sim_folder)]
        assert eps[0] == eps[1] and len(eps[0]) == 4 and eps[0] == sorted(eps[0])


def test_a_client_killed_mid_round_does_not_stop_the_round(tmp_path):
    sets = ["data.num_clients=3", "rounds=4", "name=kill", "evaluate.federated_fraction=0", "server.round_timeout_s=30"]
    with Federation(tmp_path, sets) as fed:
        clients = [fed.client(c, "--app", "deploy_app:slow") for c in range(3)]
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("kill-*/checkpoints/round-00000001.json")):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)  # round 2 is under way: every client is in its half-second fit
        os.kill(clients[1].pid, signal.SIGKILL)
        started = time.monotonic()
        fed.wait()
        assert time.monotonic() - started < 25  # the lost connection fails the client at once, not at the deadline
    import json

    (folder,) = tmp_path.glob("kill-*")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4] and all(r["status"] == "ok" for r in records)
    assert records[1]["clients_succeeded"] == 2 and "client 1 (transport)" in records[1]["failures"][0]
    assert records[3]["clients_succeeded"] == 2


def test_garbage_on_the_port_does_not_crash_the_server(tmp_path):
    sets = ["data.num_clients=2", "rounds=3", "name=junk"]
    with Federation(tmp_path, sets) as fed:
        host, port = fed.address.rsplit(":", 1)
        rng = random.Random(0)
        idle = socket.create_connection((host, int(port)), timeout=5)  # half-open: connects, never speaks
        for n in (1, 9, 100, 5000):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(bytes(rng.randrange(256) for _ in range(n)))
        with socket.create_connection((host, int(port)), timeout=5) as s:  # an HTTP/2 preface cut short
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04")
        clients = [fed.client(c) for c in range(2)]
        out = fed.wait(timeout=90)
        idle.close()
        for c in clients:
            c.communicate(timeout=30)
    assert "stopped by rounds after 3 rounds" in out


def test_a_public_address_is_refused_until_tls_exists(tmp_path):
    r = subprocess.run(cohort("server", "--address", "0.0.0.0:0", "--out", str(tmp_path)), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "not a loopback address" in r.stderr


def test_a_client_without_a_server_gives_up_with_a_clear_message():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    r = subprocess.run(cohort("client", "--server", f"127.0.0.1:{port}", "--id", "0", "--retry-s", "1"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot reach the server" in r.stderr


def test_rounds_sample_from_the_clients_connected(tmp_path):
    import json

    sets = ["data.num_clients=3", "rounds=2", "name=two", "server.fraction=1.0"]
    with Federation(tmp_path, sets, server_args=("--min-clients", "2")) as fed:
        clients = [fed.client(c) for c in (0, 2)]  # client 1 never comes
        fed.wait()
        for c in clients:
            c.communicate(timeout=30)
    (folder,) = tmp_path.glob("two-*")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(r["clients_sampled"], r["clients_succeeded"], r["clients_failed"]) for r in records] == [(2, 2, 0)] * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_server_resumes_and_its_clients_reconnect(tmp_path):
    import json

    port = free_port()
    sets = ["data.num_clients=3", "rounds=6", "name=crash", "evaluate.federated_fraction=0"]
    procs = []
    try:
        server = subprocess.Popen(cohort("server", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path), "--quiet",
                                         *[a for s in sets for a in ("--set", s)]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)
        procs.append(server)
        clients = [subprocess.Popen(cohort("client", "--server", f"127.0.0.1:{port}", "--id", str(c), "--retry-s", "60",
                                           "--app", "deploy_app:slow"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)
                   for c in range(3)]
        procs += clients
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("crash-*/checkpoints/round-00000002.json")):
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.02)
        time.sleep(0.2)  # inside round 3
        server.kill()
        server.wait(timeout=30)
        (folder,) = tmp_path.glob("crash-*")
        resumed = subprocess.run(cohort("server", "--address", f"127.0.0.1:{port}", "--resume", str(folder), "--quiet"),
                                 capture_output=True, text=True, timeout=120, env=ENV, cwd=TESTS)
        assert resumed.returncode == 0, resumed.stderr
        for c in clients:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0 and "done (the run has ended)" in out, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=30)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]  # no round lost or doubled
    assert all(r["status"] == "ok" and r["clients_succeeded"] == 3 for r in records)
    assert json.loads((folder / "summary.json").read_text())["rounds_completed"] == 6


@pytest.mark.slow
def test_three_clients_train_an_mnist_subset_and_accuracy_rises(tmp_path, data_dir):
    import json

    config = str(TESTS.parent / "examples" / "mnist_2nn_iid.toml")
    sets = ["data.num_clients=30", "rounds=3", "name=mnist", "server.fraction=1.0", f"data.dir='{data_dir}'",
            "evaluate.target=0.999"]
    args = cohort("server", config, "--address", "127.0.0.1:0", "--out", str(tmp_path), "--no-progress",
                  "--min-clients", "3", *[a for s in sets for a in ("--set", s)])
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)]
    try:
        server = procs[0]
        line = ""
        while "listening on " not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, server.stderr.read()
        address = line.split("listening on ")[1].split(";")[0]
        for c in range(3):
            procs.append(subprocess.Popen(cohort("client", "--server", address, "--id", str(c), "--config", config,
                                                 *[a for s in sets for a in ("--set", s)]),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS))
        out, err = server.communicate(timeout=240)
        assert server.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
    (folder,) = tmp_path.glob("mnist-*")
    acc = [json.loads(line)["accuracy"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(acc) == 3 and acc[0] < acc[2] and acc[2] > 0.85


@pytest.mark.parametrize("flag, value", [("--wait-s", "nan"), ("--wait-s", "-1"), ("--chunk-mb", "0"),
                                         ("--max-update-mb", "-1"), ("--min-clients", "-2"), ("--min-clients", "99")])
def test_server_flags_are_checked(flag, value, tmp_path, capsys):
    from cohort.cli import main

    assert main(["server", "--address", "127.0.0.1:0", "--out", str(tmp_path), flag, value]) == 2
    assert f"{flag} is" in capsys.readouterr().err


def test_fedbuff_runs_over_grpc_in_arrival_order(tmp_path):
    import json

    sets = ["data.num_clients=3", "rounds=4", "name=buff", "server.policy='fedbuff'", "fedbuff.buffer_size=2",
            "fedbuff.concurrency=2", "evaluate.federated_fraction=0"]
    out = run_federation(tmp_path, sets, clients=3)
    assert "stopped by rounds after 4 rounds" in out
    (folder,) = tmp_path.glob("buff-*")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_succeeded"] for r in records] == [2, 2, 2, 2] and all("staleness_max" in r for r in records)
    assert records[-1]["accuracy"] > 0.5


def test_the_server_serves_a_live_view_of_its_connected_clients(tmp_path):
    import json
    import re
    import urllib.request

    sets = ["data.num_clients=3", "rounds=6", "name=viewed", "evaluate.federated_fraction=0"]
    with Federation(tmp_path, sets, server_args=("--view", "--view-address", "127.0.0.1:0")) as fed:
        clients = [fed.client(c, "--app", "deploy_app:slow") for c in range(3)]
        url, deadline = None, time.monotonic() + 60
        while url is None:
            line = fed.readline()
            assert line and time.monotonic() < deadline, fed.stderr()
            m = re.search(r"live view: (http://\S+)", line)
            url = m.group(1) if m else None
        state = {}
        while time.monotonic() < deadline:  # the run log says who is connected while the rounds go on
            state = json.loads(urllib.request.urlopen(url + "api/state", timeout=10).read())
            if state["status"]["state"] == "running" and len([c for c in state["clients"] if c["connected"]]) == 3:
                break
            time.sleep(0.2)
        assert sorted(c["id"] for c in state["clients"] if c["connected"]) == [0, 1, 2]
        fed.wait()
        for c in clients:
            c.communicate(timeout=60)
