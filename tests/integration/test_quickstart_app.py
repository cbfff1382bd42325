"""Flower's quickstart-pytorch ported to cohort (examples/quickstart_pytorch): Net, train and test as a
Flower user has them, MNIST from the shared data, a [-1, 1] normalisation of the app's own. The same
module runs in every simulation backend and deployed (a server and 3 client processes, mutual TLS):
all report the same accuracy, the deployed server's accuracy is the app's own test() of its final
model, and the server opens no training file (a coordinating app's server: no data file at all)."""

import json
import os
import sys
from pathlib import Path

import pytest

from cohort.channel.grpc.certs import make_certs
from cohort.core.arrays import load_safetensors
from processes import ENV, TESTS, Federation, cohort

EXAMPLE = TESTS.parent / "examples" / "quickstart_pytorch"
DATA = Path(os.environ.get("COHORT_DATA_DIR", "/work/shared/data"))
SETS = ["data.num_clients=3", "server.fraction=1.0", "app.examples=600", "app.test-examples=1000", "app.learning-rate=0.05", "name=qs"]
APP_ENV = {**ENV, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), ENV["PYTHONPATH"]]), "COHORT_DATA_DIR": str(DATA)}

pytestmark = pytest.mark.slow


def audited(*args):
    return [sys.executable, str(TESTS / "audited.py"), *args]


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def simulate(out, *sets):
    import subprocess

    r = subprocess.run(cohort("run", "--app", "app:app", "--out", str(out), "--no-progress", "--quiet",
                              *[a for s in [*SETS, *sets] for a in ("--set", s)]),
                       capture_output=True, text=True, timeout=300, env=APP_ENV, cwd=EXAMPLE)
    assert r.returncode == 0, r.stderr
    assert "looks like trained weights" not in r.stderr and "not writable" not in r.stderr, r.stderr
    (folder,) = out.glob("qs-*")
    return folder


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return {b: simulate(out / b, f"simulation.backend={b}", "simulation.workers=2")
            for b in ("inprocess", "processes", "vectorized")}


def test_every_backend_reports_the_same_accuracy(simulated):
    runs = {b: records(f) for b, f in simulated.items()}
    accuracies = {b: [r["accuracy"] for r in rs] for b, rs in runs.items()}
    assert [r["round"] for r in runs["inprocess"]] == [0, 1, 2, 3]  # evaluate.initial: round 0 is the initial model
    assert len({tuple(a) for a in accuracies.values()}) == 1, accuracies
    assert accuracies["inprocess"][-1] > accuracies["inprocess"][0] + 0.2  # it learns
    models = {b: load_safetensors(f / "model.safetensors") for b, f in simulated.items()}
    for b, m in models.items():
        assert all(m[k].tobytes() == models["inprocess"][k].tobytes() for k in m), b


def test_deployed_with_tls_equals_simulation_and_the_apps_own_test(simulated, tmp_path):
    certs = make_certs(tmp_path / "certs", ["127.0.0.1"])
    log = tmp_path / "opened.txt"
    env = {**APP_ENV, "AUDIT_UNDER": str(DATA), "AUDIT_LOG": str(log)}
    server_args = ("--app", "app:app", "--min-clients", "3", "--tls-cert", str(certs["cert"]), "--tls-key",
                   str(certs["key"]), "--tls-client-ca", str(certs["ca"]))
    tls = ("--tls-ca", str(certs["ca"]), "--tls-cert", str(certs["client_cert"]), "--tls-key", str(certs["client_key"]))
    with Federation(tmp_path / "dep", SETS, server_args, env=env, cwd=EXAMPLE, command=audited) as fed:
        clients = [fed._start(cohort("client", "--server", fed.address, "--id", str(c), "--retry-s", "20",
                                     "--app", "app:app", *tls)) for c in range(3)]
        fed.wait(timeout=300)
        for c in clients:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0 and "done (the run has ended)" in out, err
    (folder,) = (tmp_path / "dep").glob("qs-*")
    deployed = records(folder)
    assert [r["accuracy"] for r in deployed] == [r["accuracy"] for r in records(simulated["inprocess"])]
    # the deployed server's accuracy is what the app's own test() says of the final model
    sys.path.insert(0, str(EXAMPLE))
    try:
        import torch

        import cohort as c
        from task import Net, load_test, test

        net = Net()
        net.load_state_dict(c.to_torch(load_safetensors(folder / "model.safetensors")))
        loss, accuracy = test(net, load_test(examples=1000))
    finally:
        sys.path.remove(str(EXAMPLE))
    assert accuracy == deployed[-1]["accuracy"]
    assert loss == pytest.approx(deployed[-1]["loss"], rel=1e-5)
    opened = {Path(p).name for p in log.read_text().split()} if log.exists() else set()
    assert opened and opened <= {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}, opened  # never the training set
    assert torch is not None


def test_a_coordinating_server_opens_no_data_file(tmp_path):
    """An app that evaluates nothing centrally: its server reads no file of any data folder and declares
    no num_clients beyond the clients it waits for."""
    log = tmp_path / "opened.txt"
    env = {**ENV, "AUDIT_UNDER": str(DATA), "AUDIT_LOG": str(log), "COHORT_DATA_DIR": str(DATA)}
    with Federation(tmp_path / "dep", ["rounds=2"], ("--app", "counting_app:coordinator", "--min-clients", "2"),
                    env=env, command=audited) as fed:
        clients = [fed.client(c, "--app", "counting_app:coordinator") for c in range(2)]
        out = fed.wait(timeout=120)
        for c in clients:
            c_out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0, c_err
    assert "2 clients, 2 per round" in out or "2 clients, 1 per round" in out, out
    assert not log.exists(), log.read_text()
    (folder,) = (tmp_path / "dep").glob("counting-*")
    assert [r["round"] for r in records(folder)] == [1, 2]
