"""The live view without a browser: what it reads from a run folder, its JSON and event stream, the
token on a non-local address, and that it is read-only."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from starlette.testclient import TestClient

from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.experiment import run
from cohort.tracking.view import ViewServer
from cohort.tracking.view.app import check_token, make_app
from cohort.tracking.view.snapshot import RunReader


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = run(load_config(None, ["rounds=3", "server.fraction=0.5", f"output.dir='{out}'", "output.progress=false"]))
    return result.folder


def fit_rounds(folder):
    rows = [json.loads(line) for line in (folder / "clients.jsonl").read_text().splitlines()]
    counts = {}
    for r in rows:
        if r["task"] == "fit" and r["status"] == "ok":
            counts[r["client"]] = counts.get(r["client"], 0) + 1
    return counts, {r["client"] for r in rows}


def test_the_snapshot_is_the_run_folder(folder):
    reader = RunReader(folder)
    assert reader.changed()
    reader.refresh()
    assert not reader.changed()
    s = reader.snapshot()
    assert s["round"] == 3 and s["rounds"] == 3 and s["x"] == [1, 2, 3]
    assert s["status"]["state"] == "finished" and s["status"]["stopped_by"] == "rounds"
    assert len(s["metrics"]["accuracy"]) == 3 and all(0 <= a <= 1 for a in s["metrics"]["accuracy"])
    assert all(len(s["timing"][k]) == 3 for k in ("fit_seconds", "aggregate_seconds", "evaluate_seconds"))
    counts, seen = fit_rounds(folder)
    assert {c["id"] for c in s["clients"]} == seen
    assert {c["id"]: c["rounds"] for c in s["clients"] if c["rounds"]} == counts
    assert all("accuracy" in c["metrics"] for c in s["clients"])  # each site's held-out score (federated evaluation)
    # what it shows, field by field: metrics, counts, seconds, bytes, failures; never an array of the model
    assert all(set(c) == {"id", "name", "examples", "rounds", "last_round", "metrics", "failures", "last_failure", "bytes",
                          "connected", "since"} for c in s["clients"])
    assert all(c["connected"] is None for c in s["clients"])  # a simulation has no connections
    from cohort.core.arrays import load_safetensors

    weights = [repr(float(v)) for a in load_safetensors(folder / "model.safetensors").values() for v in a.ravel()[:20]]
    text = json.dumps(s)
    assert not [w for w in weights if len(w) > 8 and w in text]


def test_lines_are_read_as_they_are_written_and_a_truncated_file_is_read_again(tmp_path):
    (tmp_path / "config.toml").write_text('name = "t"\nrounds = 5\n')
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"round": 1, "accuracy": 0.5, "seconds": 1.0}\n{"round": 2, "accur')  # the second still being written
    reader = RunReader(tmp_path)
    reader.refresh()
    assert reader.snapshot()["x"] == [1]
    with metrics.open("a") as f:
        f.write('acy": 0.6, "seconds": 1.0}\n')
    reader.refresh()
    assert reader.snapshot()["x"] == [1, 2] and reader.snapshot()["metrics"]["accuracy"] == [0.5, 0.6]
    metrics.write_text('{"round": 1, "accuracy": 0.7, "loss": NaN}\n')  # resumed from round 1: rewritten shorter
    reader.refresh()
    s = reader.snapshot()
    assert s["x"] == [1] and s["metrics"]["accuracy"] == [0.7] and s["metrics"].get("loss", [None]) == [None]
    assert s["status"]["state"] == "stopped" and "killed" in s["status"]["stopped_by"]  # no summary, no lock held
    json.dumps(s, allow_nan=False)  # a non-finite value became null
    # a resume replaces the file (a new one, as long as the old or longer): read again from its start
    replacement = tmp_path / "metrics.new"
    replacement.write_text("".join(f'{{"round": {r}, "accuracy": 0.{r}, "seconds": 1.0}}\n' for r in (1, 2, 3)))
    import os

    os.replace(replacement, metrics)
    reader.refresh()
    assert reader.snapshot()["metrics"]["accuracy"] == [0.1, 0.2, 0.3]
    # a live process's PID in .lock (RunFolder writes it): running; the view never takes the lock itself
    (tmp_path / ".lock").write_text(str(os.getpid()))
    assert reader.snapshot()["status"]["state"] == "running"
    (tmp_path / ".lock").write_text("999999999")
    assert reader.snapshot()["status"]["state"] == "stopped"


def test_the_app_serves_the_page_state_and_static_files_and_nothing_that_writes(folder):
    client = TestClient(make_app(folder), base_url="http://127.0.0.1:8765")
    page = client.get("/")
    assert page.status_code == 200 and "cohort" in page.text and "view.js" in page.text
    assert client.get("/static/uPlot.iife.min.js").status_code == 200
    state = client.get("/api/state").json()
    assert state["round"] == 3
    for method in ("post", "put", "delete", "patch"):
        assert getattr(client, method)("/api/state").status_code == 405
    assert client.get("/static/../snapshot.py").status_code == 404
    assert client.get("/api/config.toml").status_code == 404
    # a page elsewhere reaching the local view through a DNS name pointed at 127.0.0.1 (DNS rebinding)
    assert client.get("/api/state", headers={"Host": "attacker.example:8765"}).status_code == 400
    assert client.get("/api/state", headers={"Host": "localhost:8765"}).status_code == 200


def test_a_non_local_view_needs_its_token(folder):
    token = check_token("0.0.0.0", None)
    assert token and len(token) >= 16  # a random one when none is given
    assert check_token("127.0.0.1", None) is None and check_token("localhost", None) is None
    client = TestClient(make_app(folder, token))
    assert client.get("/api/state").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/static/view.js").status_code == 200  # the page's own script: public, so the page can load it
    assert client.get("/api/state?token=" + "x" * 32).status_code == 401
    assert client.get("/api/state", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(f"/api/state?token={token}").status_code == 200
    assert client.get("/api/state", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with pytest.raises(ConfigError, match="at least 16"):
        check_token("0.0.0.0", "short")


def test_events_stream_the_state_and_a_non_local_address_refuses_requests_without_the_token(folder):
    view = ViewServer(folder, "127.0.0.1:0").start()
    try:
        with urllib.request.urlopen(view.url + "api/events", timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            first = stream.readline().decode()
            data = stream.readline().decode()
        assert first == "event: state\n" and json.loads(data.removeprefix("data: "))["round"] == 3
    finally:
        view.stop()
    # on an address other than loopback (0.0.0.0: every interface), reached here through 127.0.0.1
    view = ViewServer(folder, "0.0.0.0:0").start()
    try:
        assert "?token=" in view.url
        plain = f"http://127.0.0.1:{view.port}/api/state"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(plain, timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(f"{plain}?token={view.token}", timeout=10) as ok:
            assert json.loads(ok.read())["round"] == 3
    finally:
        view.stop()


def test_cohort_view_refuses_what_is_not_a_run_folder_and_bad_addresses(tmp_path, folder):
    cmd = [sys.executable, "-m", "cohort.cli", "view", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a run folder" in out.stderr
    out = subprocess.run([sys.executable, "-m", "cohort.cli", "view", str(folder), "--address", "nowhere"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "expected HOST:PORT" in out.stderr
    out = subprocess.run([sys.executable, "-m", "cohort.cli", "run", "--set", "rounds=1", "--view", "--view-address",
                          "0.0.0.0:0", "--view-token", "short", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--view-token must be at least 16" in out.stderr and not list(tmp_path.glob("*/config.toml"))


def test_a_deployments_connections_come_from_the_servers_run_log(tmp_path):
    from cohort.channel.grpc.registry import RunLog

    (tmp_path / "config.toml").write_text('name = "d"\nrounds = 5\n')
    log = RunLog()
    log.event("joined", 0, "oslo")
    log.event("joined", 1, "lund")
    log.attach(tmp_path / "server.sqlite")
    reader = RunReader(tmp_path)
    reader.refresh()
    rows = {c["id"]: c for c in reader.snapshot()["clients"]}
    assert rows[0]["connected"] is True and rows[0]["name"] == "oslo" and rows[1]["connected"] is True
    log.event("left", 1, "lost connection")
    log.event("refused", 2, "wrong key")
    assert reader.changed()
    reader.refresh()
    rows = {c["id"]: c for c in reader.snapshot()["clients"]}
    assert rows[1]["connected"] is False and rows[1]["since"] > 0
    assert rows[2]["connected"] is False and rows[2]["failures"] == 1 and "wrong key" in rows[2]["last_failure"]
    log.close()


def test_privacy_and_staleness_panels_come_with_the_records_that_have_them(tmp_path):
    (tmp_path / "config.toml").write_text('name = "p"\nrounds = 3\n[privacy]\nmode = "central"\nepsilon_max = 8.0\ndelta = 1e-5\n')
    lines = [{"round": r, "accuracy": 0.5 + r / 10, "dp_epsilon": 1.5 * r, "staleness_mean": 0.5 * r, "staleness_max": r,
              "seconds": 1.0} for r in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    reader = RunReader(tmp_path)
    reader.refresh()
    s = reader.snapshot()
    assert s["privacy"] == {"epsilon": [1.5, 3.0, 4.5], "budget": 8.0, "delta": 1e-5}
    assert s["staleness"] == {"mean": [0.5, 1.0, 1.5], "max": [1, 2, 3]}
    assert "dp_epsilon" not in s["metrics"] and "staleness_max" not in s["metrics"]  # their own panels, not the curves
