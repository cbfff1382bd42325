"""Per-site identity (issue 31): each site makes its own key and a signing request, the federation's one
CA signs it, private keys never leave their site's folder, the signed certificates carry mutual TLS,
and an expired or foreign certificate is refused with a clear message."""

import datetime
import subprocess
import sys
import threading

import numpy as np
import pytest
from fakes import Constant

from cohort.channel.grpc.certs import check_current, make_ca, make_certs, request, sign, valid_until
from cohort.channel.grpc.client import Credentials, serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import Instruction, Message, Reply

SITES = ["cleveland", "hungarian", "switzerland", "va"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cohort.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Four sites provisioned through the CLI, as their operators would: a CA once, a request at each site,
    a signature by the coordinator, the certificate sent back."""
    root = tmp_path_factory.mktemp("federation")
    coordinator = root / "coordinator"
    made = cli("certs", "ca", "--out", str(coordinator))
    assert made.returncode == 0, made.stderr
    for site in SITES:
        folder = root / site
        asked = cli("certs", "request", "--site", site, "--out", str(folder))
        assert asked.returncode == 0 and "never leaves" in asked.stdout, asked.stderr
        inbox = coordinator / "requests"
        inbox.mkdir(exist_ok=True)
        (inbox / f"{site}.csr").write_bytes((folder / f"{site}.csr").read_bytes())  # only the request travels
        signed = cli("certs", "sign", "--csr", str(inbox / f"{site}.csr"), "--ca", str(coordinator / "ca.pem"),
                     "--ca-key", str(coordinator / "ca.key"), "--out", str(coordinator / "signed"))
        assert signed.returncode == 0 and "valid until" in signed.stdout, signed.stderr
        (folder / f"{site}.pem").write_bytes((coordinator / "signed" / f"{site}.pem").read_bytes())
        (folder / "ca.pem").write_bytes((coordinator / "ca.pem").read_bytes())
    server = make_certs(root / "server", ["127.0.0.1"])  # the server's own TLS certificate
    return root, server


def test_no_private_key_is_ever_written_outside_its_sites_folder(federation):
    root, _ = federation
    keys = {}
    for path in root.rglob("*"):
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
            keys[path.relative_to(root).parts[0]] = keys.get(path.relative_to(root).parts[0], []) + [path.name]
    for site in SITES:
        assert keys.pop(site) == [f"{site}.key"]  # one key per site, in its own folder
        assert (root / site / f"{site}.key").stat().st_mode & 0o077 == 0  # readable by its owner only
    assert keys.pop("coordinator") == ["ca.key"]  # the CA's, with the coordinator
    assert set(keys) == {"server"}  # the server's own TLS key (and the test set's): no site's


def test_a_site_certificate_is_short_lived_and_one_ca_signs_them_all(federation):
    root, _ = federation
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = x509.load_pem_x509_certificate((root / "coordinator" / "ca.pem").read_bytes())
    for site in SITES:
        cert = x509.load_pem_x509_certificate((root / site / f"{site}.pem").read_bytes())
        assert cert.issuer == ca.subject and site in cert.subject.rfc4514_string()
        left = valid_until(cert.public_bytes(Encoding.PEM)) - datetime.datetime.now(datetime.timezone.utc)
        assert datetime.timedelta(days=29) < left <= datetime.timedelta(days=30)
    again = cli("certs", "ca", "--out", str(root / "coordinator"))
    assert again.returncode != 0 and "already holds a CA" in again.stderr  # no new root CA per build


def mtls_round(server, root, site_cert, site_key):
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=(server["cert"].read_bytes(), server["key"].read_bytes()),
                          client_ca=(root / "coordinator" / "ca.pem").read_bytes())
    outcome = []

    def run():
        try:
            outcome.append(serve(channel.address, Constant(), 0, retry_for_s=2, log=lambda s: None,
                                 credentials=Credentials(tls_ca=server["ca"].read_bytes(), tls_cert=site_cert,
                                                         tls_key=site_key)))
        except Exception as e:  # kept for the test to look at
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        if _joined(channel):
            message = Message("fit", {"model": {"w": np.zeros(1)}}, {"round": 1})
            ((_, reply),) = list(channel.run(message, [Instruction(0, {})], timeout_s=30))
            return reply, outcome, t, channel
        return None, outcome, t, channel
    finally:
        channel.close()
        t.join(timeout=30)


def _joined(channel, seconds=20):
    try:
        channel.wait_for_clients(1, seconds)
        return True
    except TransportError:
        return False


def test_a_signed_site_certificate_carries_mutual_tls_and_a_foreign_one_is_refused(federation, tmp_path):
    root, server = federation
    site = root / "va"
    reply, outcome, _, _ = mtls_round(server, root, (site / "va.pem").read_bytes(), (site / "va.key").read_bytes())
    assert isinstance(reply, Reply) and outcome == ["the run has ended"]
    # a certificate from another CA (the test set's shared client certificate) is refused at the handshake
    other = make_certs(tmp_path / "other", ["127.0.0.1"])
    reply, outcome, _, _ = mtls_round(server, root, other["client_cert"].read_bytes(), other["client_key"].read_bytes())
    assert reply is None and isinstance(outcome[0], TransportError)


def test_an_expired_certificate_is_refused_with_a_clear_message(federation, tmp_path):
    root, _ = federation
    site = root / "hungarian"
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=40)
    old = sign(site / "hungarian.csr", root / "coordinator" / "ca.pem", root / "coordinator" / "ca.key",
               tmp_path / "old.pem", days=30, now=past)
    with pytest.raises(ConfigError, match=r"expired on .* UTC; renew it: `cohort certs request` at the site"):
        check_current(old.read_bytes(), "--tls-cert 'old.pem'")
    started = cli("client", "--server", "127.0.0.1:9", "--id", "0", "--tls-ca", str(site / "ca.pem"),
                  "--tls-cert", str(old), "--tls-key", str(site / "hungarian.key"), "--retry-s", "0")
    assert started.returncode != 0 and "expired on" in started.stderr and "Traceback" not in started.stderr


def test_a_request_altered_on_the_way_or_a_wrong_ca_key_is_refused(federation, tmp_path):
    root, _ = federation
    coordinator = root / "coordinator"
    paths = request(tmp_path / "site", "bergen")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    # the name swapped in transit: the request's signature no longer holds
    csr = x509.load_pem_x509_csr(paths["csr"].read_bytes())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    at = der.find(b"bergen")
    der[at:at + 6] = b"evilco"
    forged = tmp_path / "forged.csr"
    forged.write_bytes(x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match="its signature does not match its public key"):
        sign(forged, coordinator / "ca.pem", coordinator / "ca.key", tmp_path / "x.pem")
    wrong = make_ca(tmp_path / "wrong")
    with pytest.raises(ConfigError, match="is not the private key of --ca"):
        sign(paths["csr"], coordinator / "ca.pem", wrong["ca_key"], tmp_path / "x.pem")
    with pytest.raises(ConfigError, match="--site 'a b'"):
        request(tmp_path / "s2", "a b")
    with pytest.raises(ConfigError, match="--days is 0"):
        sign(paths["csr"], coordinator / "ca.pem", coordinator / "ca.key", tmp_path / "x.pem", days=0)
