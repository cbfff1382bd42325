"""The hostile-client suite: real `cohort server` and `cohort client` processes on 127.0.0.1 with TLS
and client keys, **default settings**, and one evil client (tests/evil_app.py) that makes one attack a
round. The run finishes; every attack is refused or bounded, with its reason in the round's record;
the final accuracy is within a point of the same federation without the evil client; and the server's
peak memory is within 50 MB of that clean run's."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from processes import ENV, TESTS, Federation, cohort

pytestmark = pytest.mark.slow
ROUNDS = 12


def cli(*args):
    r = subprocess.run(cohort(*args), capture_output=True, text=True, timeout=60, env=ENV, cwd=TESTS)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    certs, keys, registry = root / "certs", root / "keys", root / "registry.sqlite"
    cli("certs", "--out", str(certs), "--host", "127.0.0.1")
    cli("keys", "new", "--out", str(keys), *[a for c in range(4) for a in ("--id", str(c))])
    for c in range(4):
        cli("keys", "allow", "--registry", str(registry), "--id", str(c), "--public", str(keys / f"client-{c}.pub"))
    return certs, keys, registry


class PeakMemory:
    """The server's peak resident memory (VmHWM), read from /proc while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                return
            self._stop.wait(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.peak_kb / 1024


def federation(tmp_path: Path, secrets, name: str, evil: bool):
    certs, keys, registry = secrets
    sets = ["data.num_clients=4", f"rounds={ROUNDS}", f"name={name}"]
    server_args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                   "--registry", str(registry)]
    if not evil:
        server_args += ["--min-clients", "3"]
    tls = ("--tls-ca", str(certs / "ca.pem"))
    with Federation(tmp_path, sets, server_args=server_args) as fed:
        memory = PeakMemory(fed.server.pid)
        honest = [fed.client(c, *tls, "--key", str(keys / f"client-{c}.key")) for c in range(3)]  # the config's clients
        bad = fed.client(3, *tls, "--key", str(keys / "client-3.key"), "--app", "evil_app:client_fn") if evil else None
        out = fed.wait(timeout=400)
        peak = memory.stop()
        for c in honest:
            c_out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0, c_err
        bad_err = bad.communicate(timeout=60)[1] if bad is not None else ""
    (folder,) = tmp_path.glob(f"{name}-*")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return out, records, peak, bad_err, folder


@pytest.fixture(scope="module")
def clean(tmp_path_factory, secrets):
    return federation(tmp_path_factory.mktemp("clean"), secrets, "clean", evil=False)


def lines_of(record: dict, key: str) -> list[str]:
    return [line for line in record.get(key, []) if line.startswith("client 3")]


def test_every_attack_is_refused_or_bounded_and_the_run_is_as_good_as_without_it(tmp_path, secrets, clean):
    out, records, peak, bad_err, folder = federation(tmp_path, secrets, "evil", evil=True)
    clean_out, clean_records, clean_peak, _, _ = clean
    assert f"stopped by rounds after {ROUNDS} rounds" in out
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert all(r["status"] == "ok" for r in records)  # no attack stopped or skipped a round
    by_round = {r["round"]: r for r in records}
    # the arithmetic: scaled down to the round's bound, and named in its record
    for r in (2, 4):
        assert lines_of(by_round[r], "bounded"), (r, by_round[r].get("bounded"))
    for r in (2, 3, 4, 5):  # folded, each within the round's bound (x10 of a small update may already be)
        assert by_round[r]["clients_succeeded"] == 4 and by_round[r]["update_bound"] == "auto"
        assert by_round[r]["norm_bound"] > 0
    assert "e+39 scaled down to the bound" in lines_of(by_round[2], "bounded")[0]  # 3e38 in each of 62 weights
    assert by_round[5]["clients_succeeded"] == 4  # a sign flip has an ordinary norm: folded, within the bound
    assert by_round[5]["updates_bounded"] == 0
    assert any("NaN" in line or "finite" in line for line in lines_of(by_round[6], "failures")), by_round[6].get("failures")
    # the wire: a reply that never comes and a slow drip meet the round's deadline; 1 GiB is refused unread
    for r in (7, 8):
        assert any("(timeout)" in line for line in lines_of(by_round[r], "failures")), (r, by_round[r].get("failures"))
    refused = [line for r in range(9, ROUNDS + 1) for line in lines_of(by_round[r], "failures")
               if "1073741824 bytes" in line]
    assert refused, [by_round[r].get("failures") for r in range(9, ROUNDS + 1)]
    assert "turned client 3 away" in bad_err and "1073741824 bytes" in bad_err
    # as good as the clean federation, and no hungrier
    assert abs(records[-1]["accuracy"] - clean_records[-1]["accuracy"]) <= 0.01
    assert peak - clean_peak <= 50, (peak, clean_peak)
    print(f"hostile: accuracy {records[-1]['accuracy']:.4f} (clean {clean_records[-1]['accuracy']:.4f}); "
          f"server peak {peak:.0f} MB (clean {clean_peak:.0f} MB)")
