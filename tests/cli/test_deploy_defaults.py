"""`cohort server` and `cohort client` safe by default (issue 28), with real processes on 127.0.0.1: a
round deadline and a model-derived update limit unless told otherwise, said at start; SIGTERM pauses
the run (the clients wait, a resumed server takes them back, the run ends with the bits of one never
stopped); a full disk pauses too; operator mistakes are one line and exit 2."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from cohort.channel.grpc.auth import make_keys
from cohort.channel.grpc.certs import make_certs
from cohort.channel.grpc.registry import Registry
from cohort.cli import main
from processes import ENV, TESTS, Federation, cohort, free_port, model_of, until




def start(args):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)


def stop_all(procs):
    for p in procs:  # by PID: only the processes this test started
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """TLS certificates and client keys made here, and a registry allowing clients 0-2."""
    folder = tmp_path_factory.mktemp("secure")
    certs = make_certs(folder / "certs", ["127.0.0.1"])
    keys = {cid: make_keys(folder / "keys", cid) for cid in range(3)}
    registry = Registry(folder / "registry.sqlite", create=True)
    for cid, made in keys.items():
        registry.allow(cid, made["pub"].read_bytes())
    registry.close()
    server = ["--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]), "--registry", str(folder / "registry.sqlite")]
    return server, lambda cid: ["--tls-ca", str(certs["ca"]), "--key", str(keys[cid]["key"])], certs


# --- defaults said at start -------------------------------------------------------------------------
def test_a_deployment_has_a_round_deadline_and_a_model_derived_update_limit(tmp_path):
    from cohort.config import load_config
    from cohort.recipe import loop_settings

    sets = ["data.num_clients=2", "rounds=2", "name=defaults"]
    with Federation(tmp_path, sets) as fed:
        clients = [fed.client(c) for c in range(2)]
        out = fed.wait()
        for c in clients:
            c.communicate(timeout=60)
    assert "round deadline 600 s (cohort server's default" in out
    assert "once half the cohort answered in t s, the rest get max(10 s, 2 t) more" in out
    assert "largest update accepted from a client: 16.0 MiB (from the model; --max-update-mb overrides)" in out
    (folder,) = tmp_path.glob("defaults-*")
    assert load_config(folder / "config.toml").server.round_timeout_s == 600  # the run's record says it
    assert loop_settings(load_config(None)).round_timeout_s is None  # a simulation keeps no deadline


def test_no_deadline_said_loudly_and_an_explicit_limit_is_named(tmp_path):
    r = subprocess.run(cohort("server", "--address", "127.0.0.1:0", "--out", str(tmp_path), "--wait-s", "0.5",
                              "--set", "server.round_timeout_s=0", "--set", "server.straggler_factor=0"),
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "only 0 of 10 clients connected" in r.stderr
    assert ("WARNING: rounds have NO fixed deadline (server.round_timeout_s = 0): a client that never answers holds "
            "every round") in r.stdout


# --- operator errors: one line, exit 2 ------------------------------------------------------------------
def test_operator_mistakes_are_one_line_and_exit_2(tmp_path, capsys, secure):
    _, _, certs = secure
    other = make_certs(tmp_path / "other", ["127.0.0.1"])
    cases = [
        (["server", "--min-clients", "0"], "--min-clients is 0; expected an integer >= 1, or leave the flag out"),
        (["server", "--tls-cert", str(certs["cert"]), "--tls-key", str(other["key"])],
         f"--tls-key '{other['key']}' is not the private key of --tls-cert '{certs['cert']}'"),
        (["server", "--registry", str(tmp_path)], f"--registry '{tmp_path}' cannot be read: Is a directory"),
        (["client", "--server", "127.0.0.1", "--id", "0"], "--server is '127.0.0.1'; expected HOST:PORT"),
        (["client", "--server", "localhost:", "--id", "0"], "--server is 'localhost:'; expected HOST:PORT"),
    ]
    for argv, expected in cases:
        if argv[0] == "server":
            argv = [*argv, "--address", "127.0.0.1:0", "--out", str(tmp_path / "runs")]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (argv, err)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_site_that_refuses_a_task_exits_non_zero_saying_why(tmp_path):
    from hospitals import make_hospitals

    files = make_hospitals(tmp_path / "sites", per_site=60, seed=1, count=2)
    sets = ["data.dataset=csv", "data.partition=files", f"data.client_files={[str(f) for f in files]}",
            "data.csv_target=diagnosis", "data.categorical=['sex','chest_pain','smoker']", "data.missing_values=['?']",
            "data.missing_by_column={cholesterol=['0']}", "data.impute=median", "model.name=logistic_regression",
            "rounds=1", "name=refuse"]
    with Federation(tmp_path, sets) as fed:
        # site 0's own config keeps its statistics for secure aggregation: it refuses to send them in the clear
        sites = [fed._start(cohort("client", "--server", fed.address, "--id", str(c), "--retry-s", "20",
                                   "--pause-wait-s", "2", "--data", str(f),
                                   *[a for s in sets + (["secagg.mode=secagg"] if c == 0 else []) for a in ("--set", s)]))
                 for c, f in enumerate(files)]
        fed.server.wait(timeout=120)
        err = fed.stderr()
        assert fed.server.returncode == 2 and "could not agree their data" in err
        s_out, s_err = sites[0].communicate(timeout=60)
    assert sites[0].returncode == 2 and "done" not in s_out
    errors = [line for line in s_err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "client 0 failed its last task (data_statistics)" in errors[0]
    assert "came in the clear" in errors[0] and "Traceback" not in s_err


# --- pause, don't end -------------------------------------------------------------------------------------
def test_the_goodbye_says_ended_only_for_a_final_stop_written_by_this_server(tmp_path):
    from cohort.cli_lifecycle import goodbye_for, resume_command

    folder = tmp_path / "run"
    folder.mkdir()
    args = Namespace(resume=None, command="server", address="127.0.0.1:0", bound_address="127.0.0.1:4567",
                     tls_cert="/c.pem", tls_key="/k.pem", registry=None, bulk_port=0, min_clients=None, wait_s=300.0,
                     chunk_mb=4, max_update_mb=0, heartbeat_s=5.0, data_dir=None, tls_client_ca=None)
    goodbye = goodbye_for(args)
    assert goodbye() == "the server stopped before the run began"  # no run folder: nothing to resume
    args.run_folder = str(folder)
    for stopped_by, expected in [("rounds", "the run has ended"), ("target", "the run has ended"),
                                 ("terminated", "pausing: the server stopped (terminated)"),
                                 ("interrupted", "pausing: the server stopped (interrupted)"),
                                 ("error: CohortError: No space left", "pausing: the server stopped (error: ")]:
        (folder / "summary.json").write_text(json.dumps({"stopped_by": stopped_by}))
        assert goodbye().startswith(expected), stopped_by
    resumed = Namespace(**{**vars(args), "resume": str(folder)})
    assert goodbye_for(resumed)().startswith("pausing: the server stopped before writing its summary")  # an old summary
    assert resume_command(args, folder) == (f"cohort server --resume {folder} --address 127.0.0.1:4567 "
                                            "--tls-cert /c.pem --tls-key /k.pem")
    assert resume_command(Namespace(command="run"), folder) == f"cohort run --resume {folder}"


@pytest.mark.slow
def test_sigterm_pauses_the_server_its_clients_wait_and_a_resumed_server_finishes_the_run(tmp_path, secure):
    server_flags, client_flags, _ = secure
    port = free_port()
    sets = ["data.num_clients=3", "rounds=6", "evaluate.federated_fraction=0"]
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        server = start(cohort("server", "--address", address, "--out", str(tmp_path), "--quiet", *server_flags,
                              *[a for s in sets + ["name=pause"] for a in ("--set", s)]))
        procs.append(server)
        clients = [start(cohort("client", "--server", address, "--id", str(c), "--retry-s", "60", "--app",
                                "deploy_app:slow", *client_flags(c))) for c in range(3)]
        procs += clients
        until(lambda: list(tmp_path.glob("pause-*/metrics.jsonl")) and
              len(next(tmp_path.glob("pause-*/metrics.jsonl")).read_text().splitlines()) >= 2, 90,
              "round 2 was never recorded")
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
        (folder,) = tmp_path.glob("pause-*")
        assert server.returncode == 143, err
        assert f"resume with `cohort server --resume {folder} --address {address} --tls-cert" in err
        assert "its clients were told it is pausing" in err and "cohort run --resume" not in err
        assert all(c.poll() is None for c in clients)  # they wait for the server
        resumed = subprocess.run(cohort("server", "--resume", str(folder), "--address", address, "--quiet", *server_flags),
                                 capture_output=True, text=True, timeout=120, env=ENV, cwd=TESTS)
        assert resumed.returncode == 0, resumed.stderr
        for c in clients:
            out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0 and "done (the run has ended)" in out, c_err
            assert "the server is pausing (the server stopped (terminated))" in c_err
        simulated = subprocess.run(cohort("run", "--out", str(tmp_path), "--quiet",
                                          *[a for s in sets + ["name=once"] for a in ("--set", s)]),
                                   capture_output=True, text=True, timeout=120, env=ENV, cwd=TESTS)
        assert simulated.returncode == 0, simulated.stderr
    finally:
        stop_all(procs)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]  # no round lost or doubled
    assert all(r["clients_succeeded"] == 3 for r in records)
    deployed, _ = model_of(tmp_path, "pause")
    never_stopped, _ = model_of(tmp_path, "once")
    for k in never_stopped:
        assert deployed[k].tobytes() == never_stopped[k].tobytes(), k


FULL_DISK = """
import errno, os, sys
from cohort.cli import main
real_write, calls = os.write, {"n": 0}
def write(fd, data):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
        calls["n"] += 1
        if calls["n"] > 2:  # the third round's record meets a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(fd, data)
os.write = write
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_stops_the_server_with_one_line_and_its_clients_wait(tmp_path):
    sets = ["data.num_clients=2", "rounds=10", "name=disk", "evaluate.federated_fraction=0"]
    port = free_port()
    procs = []
    try:
        server = start([sys.executable, "-c", FULL_DISK, "server", "--address", f"127.0.0.1:{port}", "--out",
                        str(tmp_path), "--quiet", *[a for s in sets for a in ("--set", s)]])
        procs.append(server)
        logs = [tmp_path / f"client-{c}.log" for c in range(2)]
        clients = [subprocess.Popen(cohort("client", "--server", f"127.0.0.1:{port}", "--id", str(c), "--retry-s", "30",
                                           "--pause-wait-s", "600", *[a for s in sets[:1] for a in ("--set", s)]),
                                    stdout=subprocess.DEVNULL, stderr=logs[c].open("w"), env=ENV, cwd=TESTS)
                   for c in range(2)]
        procs += clients
        _, err = server.communicate(timeout=120)
        assert server.returncode == 2, err
        errors = [line for line in err.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error:") and "No space left on device" in errors[0], err
        assert "the clients wait for the server: resume with `cohort server --resume" in errors[0]
        # told "pausing", not "ended": each waits for a resumed server
        until(lambda: all("the server is pausing" in log.read_text() for log in logs), 30, "no client was told it pauses")
        assert all(c.poll() is None for c in clients)
    finally:
        stop_all(procs)
    records = [json.loads(line) for line in next(tmp_path.glob("disk-*")).joinpath("metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
