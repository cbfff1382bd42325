"""Client authentication over gRPC, against a real server on 127.0.0.1 and a real SQLite registry:
keys made in the test (`cohort keys new`), allowed clients are served, unknown, revoked, keyless and
wrong-key clients are refused and nothing they send reaches a round; signatures cover the result
itself, replays are refused; heartbeats mark silent clients offline; mutual TLS; the run log."""

import queue
import threading
import time

import grpc
import numpy as np
import pytest

from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc import federation_pb2_grpc as rpc
from cohort.channel.grpc.auth import digest_of, hello_bytes, load_private, make_keys, result_bytes
from cohort.channel.grpc.certs import make_certs
from cohort.channel.grpc.client import Credentials, serve
from cohort.channel.grpc.registry import Registry, RunLog, read_events
from cohort.channel.grpc.serde import encode
from cohort.channel.grpc.server import GrpcChannel
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, Reply
from fakes import Constant, Raw

MESSAGE = Message("fit", {"model": {"w": np.zeros(3, np.float32)}}, {"round": 1})


@pytest.fixture()
def keys(tmp_path):
    """Keys of clients 0 and 1, and a registry that allows them (and not client 2)."""
    made = {cid: make_keys(tmp_path / "keys", cid) for cid in (0, 1, 2)}
    registry = Registry(tmp_path / "registry.sqlite", create=True)
    for cid in (0, 1):
        registry.allow(cid, made[cid]["pub"].read_bytes(), name=f"site-{cid}")
    yield made, registry
    registry.close()


def start_client(address, cid, key_path=None, **credentials):
    """``serve`` in a thread; its outcome (the goodbye, or the error) lands in ``thread.outcome``."""
    key = load_private(key_path) if key_path else None
    creds = Credentials(key=key, **credentials)
    outcome = []

    def run():
        try:
            outcome.append(serve(address, Constant(), cid, name=f"site-{cid}", retry_for_s=2, log=lambda s: None,
                                 credentials=creds))
        except Exception as e:
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.outcome = outcome
    t.start()
    return t


def fit(channel, cid, timeout_s=20):
    ((_, outcome),) = list(channel.run(MESSAGE, [Instruction(cid, {})], timeout_s=timeout_s))
    return outcome


def test_an_allowed_client_is_served_and_its_signed_results_count(keys, tmp_path):
    made, registry = keys
    log = RunLog()
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, registry=registry, log=log)
    t = start_client(channel.address, 0, made[0]["key"])
    try:
        channel.wait_for_clients(1, 20)
        for _ in range(3):  # three results: seq 1, 2, 3, each signed over its payload
            outcome = fit(channel, 0)
            assert isinstance(outcome, Reply) and outcome.arrays["model"]["w"].tolist() == [1.0]
        assert registry.get(0).last_seen is not None
    finally:
        channel.close()
        t.join(20)
    assert t.outcome == ["the run has ended"]
    log.attach(tmp_path / "server.sqlite")
    events = [(cid, e) for _, cid, e, _ in read_events(tmp_path / "server.sqlite")]
    assert (0, "joined") in events and (None, "stopped") in events


@pytest.mark.parametrize("who", ["unknown", "wrong key", "no key", "revoked"])
def test_unknown_wrong_keyless_and_revoked_clients_are_refused(keys, who, tmp_path):
    made, registry = keys
    cid, key = {"unknown": (2, made[2]["key"]), "wrong key": (0, made[1]["key"]), "no key": (0, None),
                "revoked": (1, made[1]["key"])}[who]
    if who == "revoked":
        registry.revoke(1, "laptop stolen")
    log = RunLog()
    log.attach(tmp_path / "server.sqlite")
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, registry=registry, log=log)
    t = start_client(channel.address, cid, key)
    try:
        t.join(20)
        assert not t.is_alive()
        (error,) = t.outcome
        assert isinstance(error, TransportError)
        expected = {"unknown": "not in the server's registry", "wrong key": "does not match the key registered",
                    "no key": "requires client keys", "revoked": "revoked (laptop stolen)"}[who]
        assert expected in str(error)
        assert channel.available() == []
        outcome = fit(channel, cid, timeout_s=2)  # nothing of it reaches a round
        assert isinstance(outcome, ClientFailure) and outcome.reason == "not connected"
    finally:
        channel.close()
    if who != "no key":
        assert any(e == "refused" for _, _, e, _ in read_events(tmp_path / "server.sqlite"))


def test_a_client_revoked_while_connected_has_its_next_result_refused(keys):
    made, registry = keys
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, registry=registry)
    t = start_client(channel.address, 0, made[0]["key"])
    try:
        channel.wait_for_clients(1, 20)
        assert isinstance(fit(channel, 0), Reply)
        Registry(registry.path).revoke(0, "left the consortium")  # as `cohort keys revoke` does, from elsewhere
        outcome = fit(channel, 0)
        assert isinstance(outcome, ClientFailure) and outcome.stage is FailureStage.VALIDATE
        assert "revoked (left the consortium)" in outcome.reason
        t.join(20)
        assert "revoked" in str(t.outcome[0]) and channel.available() == []
    finally:
        channel.close()


def join_raw(address, cid, key):
    raw = Raw(address)
    raw.send(hello=pb.Hello(client_id=cid, name="raw"))
    nonce = raw.next().challenge.nonce
    raw.send(proof=pb.Proof(signature=key.sign(hello_bytes(nonce, cid, "raw"))))
    assert raw.next().WhichOneof("kind") == "welcome"
    return raw, nonce


def send_result(raw, task, nonce, key, seq, payload, tamper=b""):
    header = pb.Header(task_id=task.task_id, task="fit", version=task.version, meta='{"kind": "reply", "num_examples": 1}',
                       payload_bytes=len(payload + tamper), seq=seq)
    header.signature = key.sign(result_bytes(nonce, header, digest_of([payload])))
    raw.send(result=header)
    raw.send(chunk=pb.Chunk(data=payload + tamper, last=True))


def in_background(channel):
    """One task to client 0, its outcome collected in a thread (the channel sends as it is iterated)."""
    out = []
    t = threading.Thread(target=lambda: out.extend(channel.run(MESSAGE, [Instruction(0, {})], timeout_s=20)), daemon=True)
    t.start()
    t.results = out
    return t


def receive_task(raw):
    task = raw.next().task
    while not raw.next().chunk.last:
        pass
    return task


@pytest.mark.parametrize("attack", ["tampered payload", "replayed seq", "old connection's nonce"])
def test_signatures_cover_the_result_and_replays_are_refused(keys, attack):
    made, registry = keys
    key = load_private(made[0]["key"])
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, registry=registry)
    _, [payload] = encode({"model": {"w": np.full(3, 7, np.float32)}}, 2**20)
    try:
        old_nonce = None
        if attack == "old connection's nonce":  # a result signed on an earlier connection, replayed on a new one
            raw, old_nonce = join_raw(channel.address, 0, key)
            raw.close()
            deadline = time.monotonic() + 10
            while channel.available() and time.monotonic() < deadline:
                time.sleep(0.05)
        raw, nonce = join_raw(channel.address, 0, key)
        results = in_background(channel)
        task = receive_task(raw)
        if attack == "tampered payload":
            send_result(raw, task, nonce, key, 1, payload, tamper=b"\0")
        elif attack == "old connection's nonce":
            send_result(raw, task, old_nonce, key, 1, payload)
        else:  # a valid result, then the same again
            send_result(raw, task, nonce, key, 1, payload)
            results.join(20)
            ((_, first),) = results.results
            assert isinstance(first, Reply) and first.arrays["model"]["w"][0] == 7
            results = in_background(channel)
            task = receive_task(raw)
            send_result(raw, task, nonce, key, 1, payload)
        results.join(20)
        ((_, outcome),) = results.results
        assert isinstance(outcome, ClientFailure) and outcome.stage is FailureStage.VALIDATE
        expected = "replayed" if attack == "replayed seq" else "signature does not match"
        assert expected in outcome.reason
        assert channel.available() == []
        raw.close()
    finally:
        channel.close()


def test_a_silent_client_is_marked_offline_by_heartbeats():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, heartbeat_s=0.2)
    raw = Raw(channel.address)
    try:
        raw.send(hello=pb.Hello(client_id=4))
        welcome = raw.next().welcome
        assert welcome.heartbeat_s == pytest.approx(0.2)
        assert channel.available() == [4]
        start = time.monotonic()
        while channel.available() and time.monotonic() - start < 10:
            time.sleep(0.05)  # it never pings
        assert channel.available() == [] and time.monotonic() - start < 3
    finally:
        raw.close()
        channel.close()


def test_a_pinging_client_stays_while_it_trains_longer_than_the_heartbeat():
    from fakes import Sleepy

    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, heartbeat_s=0.2)
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(serve(channel.address, Sleepy(1.5), 0, retry_for_s=2,
                                                             log=lambda s: None)), daemon=True)
    t.start()
    try:
        channel.wait_for_clients(1, 20)
        assert isinstance(fit(channel, 0), Reply)  # 1.5 s of training: 7 heartbeat periods
    finally:
        channel.close()
        t.join(20)
    assert outcome == ["the run has ended"]


def test_a_connection_that_never_says_hello_is_closed():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, handshake_s=0.3, threads=4)
    raws = [Raw(channel.address) for _ in range(3)]  # open streams that send nothing
    try:
        for raw in raws:
            with pytest.raises(grpc.RpcError):
                raw.next()  # the server cuts it off instead of holding a thread forever
        start_client(channel.address, 0)  # the threads are free again
        channel.wait_for_clients(1, 20)
        assert isinstance(fit(channel, 0), Reply)
    finally:
        for raw in raws:
            raw.close()
        channel.close()


def test_a_reconnecting_client_replaces_its_old_connection():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    first = Raw(channel.address)
    try:
        first.send(hello=pb.Hello(client_id=3))
        assert first.next().WhichOneof("kind") == "welcome"
        start_client(channel.address, 3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if isinstance(fit(channel, 3, timeout_s=5), Reply):
                break
        else:
            raise AssertionError("the new connection was never served")
    finally:
        first.close()
        channel.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return (make_certs(tmp_path_factory.mktemp("ours"), ["127.0.0.1"]),
            make_certs(tmp_path_factory.mktemp("other"), ["127.0.0.1"]))


@pytest.mark.parametrize("which", ["our client certificate", "no client certificate", "another CA's client certificate"])
def test_mutual_tls_serves_only_clients_with_a_certificate_from_the_ca(certs, which):
    ours, other = certs
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=(ours["cert"].read_bytes(), ours["key"].read_bytes()),
                          client_ca=ours["ca"].read_bytes())
    mine = {"our client certificate": ours, "another CA's client certificate": other}.get(which)
    extra = {} if mine is None else {"tls_cert": mine["client_cert"].read_bytes(), "tls_key": mine["client_key"].read_bytes()}
    t = start_client(channel.address, 0, tls_ca=ours["ca"].read_bytes(), **extra)
    try:
        if which == "our client certificate":
            channel.wait_for_clients(1, 20)
            assert isinstance(fit(channel, 0), Reply)
        else:
            t.join(30)
            (error,) = t.outcome
            assert isinstance(error, TransportError) and "cannot reach the server" in str(error)
            assert channel.available() == []
    finally:
        channel.close()
        t.join(20)


def test_keys_and_registry_refuse_bad_input(tmp_path, keys):
    made, registry = keys
    with pytest.raises(ConfigError, match="never overwritten"):
        make_keys(tmp_path / "keys", 0)
    with pytest.raises(ConfigError, match="--id is -1"):
        make_keys(tmp_path / "k2", -1)
    (tmp_path / "not-a-key.pem").write_text("hello")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private(tmp_path / "not-a-key.pem")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_private(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="cohort client keys are Ed25519"):
        load_private(make_certs(tmp_path / "c", ["127.0.0.1"])["key"])
    with pytest.raises(ConfigError, match="not a PEM public key"):
        registry.allow(5, b"garbage")
    with pytest.raises(ConfigError, match="not in the registry"):
        registry.revoke(9)
    with pytest.raises(ConfigError, match="does not exist"):
        Registry(tmp_path / "nope.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is no database" * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite file"):
        Registry(tmp_path / "junk.sqlite")
    with pytest.raises(ConfigError, match="need the server's own TLS"):
        GrpcChannel("127.0.0.1:0", "fedavg", {}, client_ca=b"x")
    with pytest.raises(ConfigError, match="heartbeat_s"):
        GrpcChannel("127.0.0.1:0", "fedavg", {}, heartbeat_s=0)
