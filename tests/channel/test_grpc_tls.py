"""TLS: certificates made in the test (`cohort certs`), a client that trusts the CA is served, a
client without TLS or trusting another CA is refused and never registered."""

import threading

import numpy as np
import pytest

from cohort.channel.grpc.certs import make_certs
from cohort.channel.grpc.client import Credentials, serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import Instruction, Message, Reply
from fakes import Constant


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ours = make_certs(tmp_path_factory.mktemp("ours"), ["127.0.0.1", "localhost"])
    other = make_certs(tmp_path_factory.mktemp("other"), ["127.0.0.1"])
    return ours, other


def tls_channel(paths):
    return GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=(paths["cert"].read_bytes(), paths["key"].read_bytes()))


def client_thread(address, ca):
    outcome = []

    def run():
        try:
            outcome.append(serve(address, Constant(), 0, retry_for_s=2, log=lambda s: None,
                                 credentials=Credentials(tls_ca=ca)))
        except Exception as e:
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def test_a_client_trusting_the_ca_is_served_over_tls(certs):
    ours, _ = certs
    channel = tls_channel(ours)
    t, outcome = client_thread(channel.address, ours["ca"].read_bytes())
    try:
        channel.wait_for_clients(1, 30)
        message = Message("fit", {"model": {"w": np.zeros(1)}}, {"round": 1})
        ((_, reply),) = list(channel.run(message, [Instruction(0, {})], timeout_s=30))
        assert isinstance(reply, Reply) and reply.arrays["model"]["w"][0] == 1.0
    finally:
        channel.close()
        t.join(timeout=30)
    assert outcome == ["the run has ended"]


@pytest.mark.parametrize("which", ["no tls", "another ca"])
def test_a_client_without_tls_or_with_another_ca_is_refused(certs, which):
    ours, other = certs
    channel = tls_channel(ours)
    ca = None if which == "no tls" else other["ca"].read_bytes()
    t, outcome = client_thread(channel.address, ca)
    try:
        t.join(timeout=60)
        assert channel.available() == []  # it never got as far as registering
    finally:
        channel.close()
    (error,) = outcome
    assert isinstance(error, TransportError) and "cannot reach the server" in str(error)


def test_a_public_address_needs_tls_and_bad_files_are_named(tmp_path, certs):
    with pytest.raises(ConfigError, match="serve it with TLS"):
        GrpcChannel("10.1.2.3:0", "fedavg", {})
    from cohort.cli import main

    (tmp_path / "x.pem").write_text("not a certificate")
    assert main(["server", "--address", "127.0.0.1:0", "--out", str(tmp_path), "--tls-cert", str(tmp_path / "x.pem"),
                 "--tls-key", str(certs[0]["key"])]) == 2
    with pytest.raises(ConfigError, match="--host '' is neither"):
        make_certs(tmp_path / "c", [""])
