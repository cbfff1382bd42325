"""A secured federation with real processes on 127.0.0.1: certificates and keys made with the CLI
(`cohort certs`, `cohort keys`), a server with TLS and a SQLite registry, two allowed clients that
train, and clients that are refused: a wrong key, no TLS, another CA's certificate, an id outside the
federation. What each refused client prints is what a user sees."""

import json
import subprocess
from pathlib import Path

from cohort.channel.grpc.registry import read_events
from processes import ENV, TESTS, Federation, cohort


def cli(*args):
    r = subprocess.run(cohort(*args), capture_output=True, text=True, timeout=60, env=ENV, cwd=TESTS)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_only_allowed_clients_with_their_keys_over_tls_take_part(tmp_path: Path):
    certs, other, keys, registry = tmp_path / "certs", tmp_path / "other", tmp_path / "keys", tmp_path / "registry.sqlite"
    cli("certs", "--out", str(certs), "--host", "127.0.0.1")
    cli("certs", "--out", str(other), "--host", "127.0.0.1")
    cli("keys", "new", "--out", str(keys), "--id", "0", "--id", "1", "--id", "2")
    for cid in (0, 1, 2):
        cli("keys", "allow", "--registry", str(registry), "--id", str(cid), "--public", str(keys / f"client-{cid}.pub"))
    cli("keys", "revoke", "--registry", str(registry), "--id", "2", "--reason", "site closed")
    sets = ["data.num_clients=3", "rounds=3", "name=secure", "evaluate.federated_fraction=0"]
    server_args = ("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                   "--registry", str(registry), "--min-clients", "2",
                   "--wait-s", "240")  # the five refused clients come and go first: on a loaded machine, over a minute
    tls = ("--tls-ca", str(certs / "ca.pem"))
    with Federation(tmp_path, sets, server_args=server_args) as fed:
        refused = {
            "wrong key": fed.client(1, *tls, "--key", str(keys / "client-0.key"), "--retry-s", "3"),
            "revoked": fed.client(2, *tls, "--key", str(keys / "client-2.key"), "--retry-s", "3"),
            "no tls": fed.client(0, "--key", str(keys / "client-0.key"), "--retry-s", "3"),
            "another ca": fed.client(0, "--tls-ca", str(other / "ca.pem"), "--key", str(keys / "client-0.key"),
                                     "--retry-s", "3"),
            "outside": fed.client(7, *tls, "--app", "deploy_app:slow", "--retry-s", "3"),
        }
        seen = {}
        for what, proc in refused.items():  # each is turned away before the run could use it
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 2, (what, out, err)
            seen[what] = err
        clients = [fed.client(c, *tls, "--key", str(keys / f"client-{c}.key")) for c in (0, 1)]
        out = fed.wait()
        for c in clients:
            c_out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0 and "done (the run has ended)" in c_out, c_err
    assert "turned client 1 away: the hello's signature does not match the key registered for client 1" in seen["wrong key"]
    assert "turned client 2 away: client 2's key was revoked (site closed)" in seen["revoked"]
    assert "cannot reach the server" in seen["no tls"] and "cannot reach the server" in seen["another ca"]
    assert "client id 7 is outside this federation" in seen["outside"]
    assert "stopped by rounds after 3 rounds" in out
    (folder,) = tmp_path.glob("secure-*")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(r["clients_sampled"], r["clients_succeeded"]) for r in records] == [(2, 2)] * 3
    events = read_events(folder / "server.sqlite")
    refusals = [(cid, detail) for _, cid, e, detail in events if e == "refused"]
    assert {cid for cid, _ in refusals} == {1, 2, 7} and {cid for _, cid, e, _ in events if e == "joined"} == {0, 1}
    listing = cli("keys", "list", "--registry", str(registry))
    assert "revoked" in listing.splitlines()[3] and listing.splitlines()[1].split()[-1] == "allowed"
    assert listing.splitlines()[1].count("-") > 2  # client 0 has a last-seen time


def test_a_public_address_needs_a_registry(tmp_path):
    certs = tmp_path / "certs"
    cli("certs", "--out", str(certs), "--host", "127.0.0.1")
    r = subprocess.run(cohort("server", "--address", "0.0.0.0:0", "--out", str(tmp_path), "--tls-cert",
                              str(certs / "server.pem"), "--tls-key", str(certs / "server.key")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "must authenticate" in r.stderr and "--registry" in r.stderr
