"""The bulk connections beside the gRPC stream (``bulk.py``), against a real server on 127.0.0.1:
payloads arrive bit for bit on them and in chunks without them; a client that cannot reach the bulk
port falls back to the stream; strangers, garbage, reused tokens and silence on the bulk port are
closed unanswered; they speak TLS and mutual TLS as the stream does; a payload that disagrees with
its header is refused."""

import socket
import threading
import time
import types

import numpy as np
import pytest

from cohort import EvaluateResult, FitResult
from cohort.channel.grpc import bulk
from cohort.channel.grpc import client as client_module
from cohort.channel.grpc.certs import make_certs
from cohort.channel.grpc.client import Credentials, serve
from cohort.channel.grpc.serde import decode, layout
from cohort.channel.grpc.server import GrpcChannel
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, Instruction, Message, Reply

# after the 7 float16 values the float64 array is off its 8-byte alignment in the payload: it is
# copied, not viewed (the big one, first, is viewed)
SENT = {"model": {"w": np.arange(300_000, dtype=np.float32).reshape(600, 500), "h": np.arange(7, dtype=np.float16),
                  "d": np.linspace(0, 1, 5), "s": np.array(2.5, np.float32), "e": np.zeros((0, 3), np.float32)}}


class PlusOne:
    """Records what it received and moves every array by +1."""

    def __init__(self) -> None:
        self.received = []

    def __call__(self, cid):
        return self

    def fit(self, arrays, config):
        self.received.append({k: np.array(v) for k, v in arrays.items()})
        return FitResult({k: v + 1 for k, v in arrays.items()}, 1)

    def evaluate(self, arrays, config):
        return EvaluateResult(0.0, 1)


def start(address, client, credentials=None):
    logs, outcome = [], []

    def run():
        try:
            outcome.append(serve(address, client, 0, retry_for_s=3, log=logs.append, credentials=credentials))
        except Exception as e:
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.logs, t.outcome = logs, outcome
    t.start()
    return t


def fit(channel, message=None, timeout_s=30):
    ((_, outcome),) = list(channel.run(message or Message("fit", SENT, {"round": 1}, version=2), [Instruction(0, {})],
                                       timeout_s=timeout_s))
    return outcome


@pytest.mark.parametrize("bulk_port", [0, None], ids=["bulk sockets", "chunks on the stream"])
def test_payloads_arrive_bit_for_bit_either_way(bulk_port):
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, bulk_port=bulk_port)
    client = PlusOne()
    t = start(channel.address, client)
    try:
        channel.wait_for_clients(1, 20)
        for _ in range(2):
            reply = fit(channel)
            assert isinstance(reply, Reply) and reply.version == 2
            back = reply.arrays["model"]
            for k, a in SENT["model"].items():  # +1, in each array's own dtype and shape
                assert back[k].dtype == a.dtype and back[k].shape == a.shape and back[k].tobytes() == (a + 1).tobytes()
        for got in client.received:
            for k, a in SENT["model"].items():
                assert got[k].dtype == a.dtype and got[k].shape == a.shape and got[k].tobytes() == a.tobytes()
        ((session,),) = [list(channel._sessions.values())]
        assert (session.bulk_down is not None) == (bulk_port is not None)
        how = "payloads on bulk connections" if bulk_port is not None else "payloads in chunks on the stream"
        assert any(how in line for line in t.logs), t.logs
    finally:
        channel.close()
        t.join(20)
    assert t.outcome == ["the run has ended"]


def test_a_client_that_cannot_reach_the_bulk_port_uses_the_stream():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    channel._bulk.close()  # as a firewall that stops the port would
    t = start(channel.address, PlusOne())
    try:
        channel.wait_for_clients(1, 20)
        assert isinstance(fit(channel), Reply)
        assert any(f"bulk connections to port {channel.bulk_port} failed" in line for line in t.logs), t.logs
    finally:
        channel.close()
        t.join(20)


def knock(port, data, wait_s=5.0) -> bytes:
    """Connect to the bulk port, send ``data``, return what comes back before the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        if data:
            s.sendall(data)
        try:
            return s.recv(16)
        except (ConnectionResetError, TimeoutError):
            return b""


def test_the_bulk_port_closes_strangers_unanswered_and_serves_on():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, handshake_s=0.5)
    port = channel.bulk_port
    try:
        assert knock(port, np.random.default_rng(0).bytes(300)) == b""  # garbage
        assert knock(port, bulk.MAGIC + bulk.new_token() + bulk.DOWN) == b""  # a token never given out
        assert knock(port, bulk.MAGIC + bytes(bulk.TOKEN_BYTES) + b"X") == b""  # no such direction
        started = time.monotonic()
        assert knock(port, b"") == b""  # silence: closed at the handshake deadline
        assert time.monotonic() - started < 4
        t = start(channel.address, PlusOne())
        channel.wait_for_clients(1, 20)
        (session,) = channel._sessions.values()
        deadline = time.monotonic() + 10
        while session.bulk_up is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for direction in (bulk.DOWN, bulk.UP):  # the real token, once more: each direction opens once
            assert knock(port, bulk.MAGIC + session.bulk_token + direction) == b""
        assert isinstance(fit(channel), Reply)  # the client's own bulk sockets were not disturbed
        assert session.bulk_down is not None
    finally:
        channel.close()
    t.join(20)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), ["127.0.0.1"])


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual tls"])
def test_bulk_sockets_speak_tls_as_the_stream_does(certs, mutual):
    tls = (certs["cert"].read_bytes(), certs["key"].read_bytes())
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=tls, client_ca=certs["ca"].read_bytes() if mutual else None)
    extra = {"tls_cert": certs["client_cert"].read_bytes(), "tls_key": certs["client_key"].read_bytes()} if mutual else {}
    t = start(channel.address, PlusOne(), Credentials(tls_ca=certs["ca"].read_bytes(), **extra))
    try:
        channel.wait_for_clients(1, 20)
        assert isinstance(fit(channel), Reply)
        assert any("payloads on bulk connections" in line for line in t.logs), t.logs
        # plain text on the TLS port is not understood; under mutual TLS, TLS without a certificate fails too
        assert knock(channel.bulk_port, bulk.MAGIC + bulk.new_token() + bulk.DOWN) == b""
        context = bulk.client_context(certs["ca"].read_bytes(), None, None)
        if mutual:
            with pytest.raises(OSError):
                sock = bulk.connect("127.0.0.1", channel.bulk_port, bulk.new_token(), bulk.DOWN, context)
                sock.recv(1)
    finally:
        channel.close()
        t.join(20)


@pytest.mark.parametrize("lie", ["task id", "length"])
def test_a_result_whose_bulk_payload_disagrees_with_its_header_is_refused(monkeypatch, lie):
    real = bulk.send

    def lying_send(sock, task_id, total, sources):
        if lie == "task id":
            return real(sock, task_id + 1, total, sources)
        return real(sock, task_id, total - 1, [b"".join(bytes(s) for s in sources)[:-1]])

    monkeypatch.setattr(client_module, "bulk", types.SimpleNamespace(**{**vars(bulk), "send": lying_send}))
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    t = start(channel.address, PlusOne())
    try:
        channel.wait_for_clients(1, 20)
        outcome = fit(channel)
        assert isinstance(outcome, ClientFailure) and "the stream announced task" in outcome.reason, outcome
        assert channel.available() == []
    finally:
        channel.close()
        t.join(20)
    (error,) = t.outcome  # the client was told why, and stopped
    assert isinstance(error, TransportError) and "the stream announced" in str(error)


def test_receive_refuses_a_mismatch_and_a_short_payload():
    total, sources = layout(SENT)
    a, b = socket.socketpair()
    with a, b:
        a.sendall((7).to_bytes(8, "big") + total.to_bytes(8, "big"))
        with pytest.raises(TransportError, match="task 7's .* where the stream announced task 8's"):
            bulk.receive(b, 8, total)
    a, b = socket.socketpair()
    with b:
        a.sendall((7).to_bytes(8, "big") + total.to_bytes(8, "big") + bytes(sources[0]))  # the header, no arrays
        a.close()
        with pytest.raises(ConnectionError, match="closed after"):
            bulk.receive(b, 7, total)


def test_a_whole_payload_decodes_to_views_where_aligned():
    total, sources = layout(SENT)
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=bulk.send, args=(a, 1, total, sources))
        sender.start()
        buf = bulk.receive(b, 1, total)
        sender.join()
    got = decode([buf])["model"]
    for k, x in SENT["model"].items():
        assert got[k].dtype == x.dtype and got[k].shape == x.shape and got[k].tobytes() == x.tobytes()
    assert np.shares_memory(got["w"], buf)  # no copy of the big one
    assert got["d"].ctypes.data % 8 == 0  # the misaligned float64 was copied to aligned memory


def test_bad_bulk_ports_are_refused():
    for bad in (-1, 70000, "8080", 1.5):
        with pytest.raises(ConfigError, match="bulk_port"):
            GrpcChannel("127.0.0.1:0", "fedavg", {}, bulk_port=bad)
    taken = socket.create_server(("127.0.0.1", 0))
    with taken, pytest.raises(TransportError, match="cannot listen for bulk connections"):
        GrpcChannel("127.0.0.1:0", "fedavg", {}, bulk_port=taken.getsockname()[1])
