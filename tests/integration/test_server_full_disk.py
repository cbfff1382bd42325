"""A real full disk under `cohort server`: its run folder on a small tmpfs in a private mount namespace
(`unshare -m`), filled from outside mid-run. The server stops with one line and exit 2, its clients
wait (told it pauses), and once there is room `cohort server --resume` takes them back and finishes
the run: every round once, none lost."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from processes import ENV, TESTS, cohort, free_port, until

pytestmark = pytest.mark.slow  # it needs root with unshare and nsenter (util-linux), as CI has: no skip hides it




def test_a_full_tmpfs_stops_the_server_in_one_line_and_a_resume_finishes_the_run(tmp_path):
    out = tmp_path / "disk"
    out.mkdir()
    # a mount namespace of its own that holds a 16 MiB tmpfs at `out`, until this test ends it (by PID)
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size=16m tmpfs {out} && echo ready && exec sleep 600"],
                              stdout=subprocess.PIPE, text=True)
    inside = Path(f"/proc/{holder.pid}/root{out}")  # the tmpfs as the namespace sees it
    address = f"127.0.0.1:{free_port()}"
    sets = ["data.num_clients=3", "rounds=6", "name=full", "evaluate.federated_fraction=0"]
    procs = [holder]

    def server(*args):
        return subprocess.Popen(["nsenter", "-t", str(holder.pid), "-m", "--", *cohort("server", "--address", address,
                                                                                        "--quiet", *args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TESTS)

    try:
        assert holder.stdout.readline().strip() == "ready"
        first = server("--out", str(out), *[a for s in sets for a in ("--set", s)])
        procs.append(first)
        logs = [tmp_path / f"client-{c}.log" for c in range(3)]
        clients = [subprocess.Popen(cohort("client", "--server", address, "--id", str(c), "--retry-s", "60",
                                           "--app", "deploy_app:slow"),
                                    stdout=subprocess.PIPE, stderr=logs[c].open("w"), text=True, env=ENV, cwd=TESTS)
                   for c in range(3)]
        procs += clients
        until(lambda: any(len(p.read_text().splitlines()) >= 2 for p in inside.glob("full-*/metrics.jsonl")), 120,
              "round 2 was never recorded")
        with open(inside / "filler", "wb") as f:  # every free byte of the tmpfs, from outside the server
            try:
                while True:
                    f.write(bytes(1 << 20))
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        _, err = first.communicate(timeout=120)
        assert first.returncode == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "No space left on device" in lines[0], err
        assert "cohort server --resume" in lines[0] and "Traceback" not in err
        until(lambda: all("the server is pausing" in log.read_text() for log in logs), 30, "no client was told it pauses")
        assert all(c.poll() is None for c in clients)  # they wait for a resumed server
        (inside / "filler").unlink()  # the operator makes room
        (folder,) = [Path(str(p).replace(str(inside), str(out))) for p in inside.glob("full-*")]
        second = server("--resume", str(folder))
        procs.append(second)
        _, err2 = second.communicate(timeout=180)
        assert second.returncode == 0, err2
        for c in clients:
            c_out, _ = c.communicate(timeout=60)
            assert c.returncode == 0 and "done (the run has ended)" in c_out
        records = [json.loads(line) for line in (inside / folder.name / "metrics.jsonl").read_text().splitlines()]
    finally:
        for p in reversed(procs):  # by PID: only what this test started; the holder last, which drops the tmpfs
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]  # every round once, none lost
    assert all(r["clients_succeeded"] == 3 for r in records)
