"""A hostile trial of the gRPC server (issue 28), against real servers on 127.0.0.1: results bounded
by the model and refused by their announced size before any byte is buffered, on the stream and on
the bulk sockets; connections that never say hello have a quota of their own and a short deadline,
and half-open TCP connections are closed; a flood of both leaves room for the registered clients;
clients retry an overloaded server and wait for a pausing one; a full registry disk refuses nobody."""

import queue
import socket
import sqlite3
import ssl
import threading
import time

import grpc
import numpy as np
import pytest

from cohort.channel.grpc import bulk
from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc import federation_pb2_grpc as rpc
from cohort.channel.grpc.admission import HELLO_S, Admission
from cohort.channel.grpc.auth import load_private, make_keys
from cohort.channel.grpc.certs import make_certs
from cohort.channel.grpc.client import Credentials, serve
from cohort.channel.grpc.limits import FLOOR_BYTES, update_limit
from cohort.channel.grpc.registry import Registry
from cohort.channel.grpc.serde import layout
from cohort.channel.grpc.server import CONNECT_S, GrpcChannel
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, Reply
from fakes import Constant, Raw

TINY = {"model": {"w": np.zeros(62, np.float32)}}  # 248 bytes: the model of the trial


def until(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def run_in_background(channel, message, cid=0, timeout_s=20):
    out = []
    t = threading.Thread(target=lambda: out.extend(channel.run(message, [Instruction(cid, {})], timeout_s=timeout_s)),
                         daemon=True)
    t.start()
    t.results = out
    return t


# --- 1. the largest accepted result follows from the model -----------------------------------------
def test_the_derived_limit_covers_what_an_honest_client_sends_and_little_more():
    model = {"model": {"w": np.zeros((2500, 2000), np.float32), "b": np.zeros(10, np.float16)},
             "control": {"w": np.zeros((2500, 2000), np.float32)}}
    honest = layout({"model": model["model"]})[0]  # 20 MB: past the floor
    plain = update_limit(model, ["model"])  # SCAFFOLD would return "control" too; FedAvg only "model"
    assert honest <= plain <= honest + 4096
    assert update_limit(model, ["model", "control"]) >= 2 * honest
    assert update_limit(TINY, ["model"]) == FLOOR_BYTES  # a tiny model: the floor (key and statistics exchanges)
    # top-k sends a float16 value and a uint16 index gap per entry: at fraction 1 a float16 array doubles
    f16 = {"model": {"w": np.zeros(20_000_000, np.float16)}}
    assert update_limit(f16, ["model"], compression="topk", topk_fraction=1.0) >= 4 * 20_000_000
    assert update_limit(f16, ["model"], compression="int8") < update_limit(f16, ["model"])
    # secure aggregation masks the model as one uint32 vector: a float16 model's doubles too
    assert update_limit(f16, ["model"], secure_group="model") >= 4 * 20_000_000


def test_an_over_size_announcement_is_refused_before_any_byte_on_the_stream():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, max_update_bytes=update_limit(TINY, ["model"]), bulk_port=None)
    raw = Raw(channel.address)
    try:
        raw.send(hello=pb.Hello(client_id=0))
        assert raw.next().WhichOneof("kind") == "welcome"
        results = run_in_background(channel, Message("fit", TINY, {}))
        task = raw.next().task
        assert raw.next().chunk.last
        started = time.monotonic()
        raw.send(result=pb.Header(task_id=task.task_id, task="fit", version=task.version, meta='{"kind": "reply"}',
                                  payload_bytes=2**30, seq=1))  # announces 1 GiB, sends not one byte of it
        bye = raw.next()
        assert bye.WhichOneof("kind") == "bye" and bye.bye.reason.startswith("refused: ")
        assert "announced a result of 1073741824 bytes" in bye.bye.reason
        with pytest.raises((grpc.RpcError, StopIteration)):
            raw.next()  # and disconnected
        results.join(10)
        ((_, outcome),) = results.results
        assert isinstance(outcome, ClientFailure) and outcome.stage is FailureStage.VALIDATE
        assert time.monotonic() - started < 5 and channel.available() == []
    finally:
        raw.close()
        channel.close()


def test_an_over_size_announcement_is_refused_before_any_byte_on_a_bulk_socket():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, max_update_bytes=FLOOR_BYTES)
    raw = Raw(channel.address)
    down = up = None
    try:
        raw.send(hello=pb.Hello(client_id=0))
        welcome = raw.next().welcome
        down = bulk.connect("127.0.0.1", welcome.bulk_port, welcome.bulk_token, bulk.DOWN, None)
        up = bulk.connect("127.0.0.1", welcome.bulk_port, welcome.bulk_token, bulk.UP, None)
        until(lambda: channel._sessions[0].bulk_up is not None, 10, "the bulk sockets were not attached")
        results = run_in_background(channel, Message("fit", TINY, {}))
        task = raw.next().task
        assert task.bulk
        bulk.receive(down, task.task_id, task.payload_bytes)
        started = time.monotonic()
        raw.send(result=pb.Header(task_id=task.task_id, task="fit", version=task.version, meta='{"kind": "reply"}',
                                  payload_bytes=FLOOR_BYTES + 1, seq=1, bulk=True))  # nothing on the bulk socket
        bye = raw.next()
        assert bye.bye.reason.startswith("refused: ") and "over the limit" in bye.bye.reason
        results.join(10)
        ((_, outcome),) = results.results
        assert isinstance(outcome, ClientFailure) and outcome.stage is FailureStage.VALIDATE
        assert time.monotonic() - started < 5  # it did not wait for the bytes (a stalled read waits 60 s)
        up.settimeout(5)
        assert up.recv(1) == b""  # the bulk socket is closed too
    finally:
        bulk.close(down)
        bulk.close(up)
        raw.close()
        channel.close()


class Inflating:
    """Returns its update in float64: twice the bytes of the float32 model it was sent."""

    def __call__(self, cid):
        from cohort import EvaluateResult, FitResult

        class C:
            def fit(self, arrays, config):
                return FitResult({k: (a + 1).astype(np.float64) for k, a in arrays.items()}, 1)

            def evaluate(self, arrays, config):
                return EvaluateResult(0.0, 1)

        return C()


@pytest.mark.parametrize("client_fn, accepted", [(Constant(), True), (Inflating(), False)])
def test_a_model_derived_limit_takes_the_honest_update_and_refuses_a_larger_one(client_fn, accepted):
    big = {"model": {"w": np.zeros(5_000_000, np.float32)}}  # 20 MB: past the floor
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    channel.set_max_update_bytes(update_limit(big, ["model"]))
    outcome_of_client = []
    t = threading.Thread(target=lambda: outcome_of_client.append(_serve_catching(channel.address, client_fn, 0)), daemon=True)
    t.start()
    try:
        channel.wait_for_clients(1, 20)
        ((_, outcome),) = list(channel.run(Message("fit", big, {}), [Instruction(0, {})], timeout_s=60))
        if accepted:
            assert isinstance(outcome, Reply) and outcome.arrays["model"]["w"][0] == 1.0
        else:
            assert isinstance(outcome, ClientFailure) and "over the limit" in outcome.reason
    finally:
        channel.close()
        t.join(20)
    assert (outcome_of_client == ["the run has ended"]) == accepted


def _serve_catching(address, client_fn, cid, **kw):
    try:
        return serve(address, client_fn, cid, retry_for_s=kw.pop("retry_for_s", 2), log=kw.pop("log", lambda s: None), **kw)
    except Exception as e:
        return e


# --- 3. connections in their hello: a quota of their own, a short deadline ---------------------------
def test_admission_evicts_the_oldest_still_in_its_hello_first():
    class Ctx:
        def __init__(self, name):
            self.name = name

    a = Admission(quota=2, hello_s=60)
    first, second, third = Ctx("first"), Ctx("second"), Ctx("third")
    assert a.arrive(1, first) == []
    a.proving(1)  # it said hello: it waits for a signature, not for silence
    assert a.arrive(2, second) == []
    assert a.arrive(3, third) == [second]  # the oldest still silent goes, not the one proving
    assert a.arrive(4, Ctx("fourth")) == [third]
    assert len(a) == 2 and a.evicted == 2
    quick = Admission(quota=2, hello_s=0.01)
    quick.arrive(1, first)
    until(lambda: quick.expired() == [first] or False, 2, "no expiry")
    assert HELLO_S <= 5


def test_silent_streams_never_hold_more_than_their_quota_and_a_client_still_joins():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, num_clients=2, preauth_quota=4, handshake_s=60)
    raws = [Raw(channel.address) for _ in range(40)]  # open streams that never say hello
    try:
        # the deadline is a minute away: what closes them now is the quota
        until(lambda: channel.admission.evicted >= 30, 20, f"evicted only {channel.admission.evicted}")
        assert len(channel.admission) <= 4
        t = threading.Thread(target=lambda: _serve_catching(channel.address, Constant(), 1, retry_for_s=20), daemon=True)
        t.start()
        channel.wait_for_clients(1, 20)
        ((_, outcome),) = list(channel.run(Message("fit", TINY, {}), [Instruction(1, {})], timeout_s=20))
        assert isinstance(outcome, Reply)
    finally:
        for raw in raws:
            raw.close()
        channel.close()


def _closed_after(sock: socket.socket, limit_s: float) -> float:
    """Seconds until the server closes ``sock`` (reading and discarding what it sends)."""
    sock.settimeout(limit_s)
    started = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), ["127.0.0.1"])


@pytest.mark.slow
def test_half_open_tcp_connections_are_closed_by_the_grpc_and_the_bulk_port(certs):
    """Measured with the defaults: the gRPC port's TLS handshake deadline (CONNECT_S, 10 s; gRPC core's
    own is 120 s) and the bulk port's (the hello deadline, HELLO_S)."""
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=(certs["cert"].read_bytes(), certs["key"].read_bytes()))
    try:
        socks = {"grpc": socket.create_connection(("127.0.0.1", int(channel.address.rsplit(":", 1)[1])), timeout=5),
                 "bulk": socket.create_connection(("127.0.0.1", channel.bulk_port), timeout=5)}
        took = {}
        threads = [threading.Thread(target=lambda k=k: took.__setitem__(k, _closed_after(socks[k], 30))) for k in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        print(f"half-open connections closed after: gRPC {took['grpc']:.2f} s, bulk {took['bulk']:.2f} s")
        assert CONNECT_S - 0.5 <= took["grpc"] <= CONNECT_S + 2
        assert HELLO_S - 0.5 <= took["bulk"] <= HELLO_S + 2
    finally:
        for s in socks.values():
            s.close()
        channel.close()


def test_a_bulk_handshake_trickled_a_byte_at_a_time_is_cut_at_its_deadline_and_a_flood_evicts_the_oldest():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, handshake_s=1.0)
    trickle = socket.create_connection(("127.0.0.1", channel.bulk_port), timeout=5)
    flood = []
    try:
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in bulk.MAGIC * 4:  # one byte every 0.3 s: each read alone is in time, the whole is not
                trickle.sendall(bytes([byte]))
                time.sleep(0.3)
                trickle.settimeout(0.01)
                try:
                    if trickle.recv(1) == b"":
                        raise ConnectionResetError("closed")
                except socket.timeout:
                    pass
        assert time.monotonic() - started < 3
        flood = [socket.create_connection(("127.0.0.1", channel.bulk_port), timeout=5) for _ in range(bulk.MAX_HANDSHAKES + 20)]
        raw = Raw(channel.address)
        raw.send(hello=pb.Hello(client_id=0))
        welcome = raw.next().welcome
        for d in (bulk.DOWN, bulk.UP):  # a real client's handshake, after the flood: the oldest made room
            bulk.close(bulk.connect("127.0.0.1", welcome.bulk_port, welcome.bulk_token, d, None))
        assert sum(_closed_after(s, 0.2) < 0.2 for s in flood[:20]) == 20  # the 20 oldest were closed
        raw.close()
    finally:
        trickle.close()
        for s in flood:
            s.close()
        channel.close()


# --- 4. an overloaded server is retried ---------------------------------------------------------------
def test_a_client_retries_a_server_too_busy_to_take_it():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, threads=1, preauth_quota=1)
    squatters = []
    try:
        for cid in range(100, 100 + channel.streams):  # registered clients fill every stream
            raw = Raw(channel.address)
            raw.send(hello=pb.Hello(client_id=cid))
            assert raw.next().WhichOneof("kind") == "welcome"
            squatters.append(raw)
        logged = []
        t = threading.Thread(target=lambda: logged.append(_serve_catching(channel.address, Constant(), 0, retry_for_s=30,
                                                                          log=logged.append)), daemon=True)
        t.start()
        until(lambda: any("busy (RESOURCE_EXHAUSTED)" in str(s) for s in logged), 20, f"no busy answer: {logged}")
        for raw in squatters:
            raw.close()
        until(lambda: 0 in channel.available(), 30, "the client never got in")
        ((_, outcome),) = list(channel.run(Message("fit", TINY, {}), [Instruction(0, {})], timeout_s=20))
        assert isinstance(outcome, Reply)
    finally:
        for raw in squatters:
            raw.close()
        channel.close()
        t.join(20)
    assert logged[-1] == "the run has ended"


# --- 5. a flood of silent streams and half-open sockets ---------------------------------------------------
def test_a_join_flood_leaves_room_for_the_registered_clients_and_a_round_completes(tmp_path, certs):
    keys = {cid: make_keys(tmp_path / "keys", cid) for cid in range(3)}
    registry = Registry(tmp_path / "registry.sqlite", create=True)
    for cid, made in keys.items():
        registry.allow(cid, made["pub"].read_bytes())
    ca = certs["ca"].read_bytes()
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=(certs["cert"].read_bytes(), certs["key"].read_bytes()),
                          registry=registry, num_clients=3)
    port = int(channel.address.rsplit(":", 1)[1])
    streams, sockets, clients = [], [], []
    try:
        # 100 raw half-open TCP sockets and 100 TLS Join streams that never say hello (they need only the CA)
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
        streams = [Raw(channel.address, ca=ca) for _ in range(100)]
        until(lambda: channel.admission.evicted >= 50, 30, f"the flood was not evicted ({channel.admission.evicted})")
        started = time.monotonic()
        for cid in range(3):
            creds = Credentials(tls_ca=ca, key=load_private(keys[cid]["key"]))
            t = threading.Thread(target=lambda c=cid, cr=creds: _serve_catching(channel.address, Constant(), c,
                                                                                retry_for_s=20, credentials=cr), daemon=True)
            t.start()
            clients.append(t)
        channel.wait_for_clients(3, 20)
        joined_s = time.monotonic() - started
        print(f"flood: 3 registered clients joined in {joined_s:.2f} s beside 100 silent streams and 100 half-open "
              f"sockets ({channel.admission.evicted} silent streams evicted)")
        assert joined_s < 5
        outcomes = list(channel.run(Message("fit", TINY, {}), [Instruction(c, {}) for c in range(3)], timeout_s=20))
        assert all(isinstance(o, Reply) for _, o in outcomes) and len(outcomes) == 3
        assert len(channel.admission) <= channel.admission.quota
    finally:
        for raw in streams:
            raw.close()
        for s in sockets:
            s.close()
        channel.close()
        for t in clients:
            t.join(20)
        registry.close()


# --- 6. a pausing server is waited for, within a bound -------------------------------------------------
def test_a_client_told_pausing_waits_for_the_resumed_server_and_gives_up_after_its_bound():
    first = GrpcChannel("127.0.0.1:0", "fedavg", {}, bulk_port=None)
    address = first.address
    logged = []
    t = threading.Thread(target=lambda: logged.append(_serve_catching(address, Constant(), 0, retry_for_s=1,
                                                                      pause_wait_s=60, log=logged.append)), daemon=True)
    t.start()
    try:
        first.wait_for_clients(1, 20)
    finally:
        first.close("pausing: stopped by SIGTERM")
    until(lambda: any("the server is pausing (stopped by SIGTERM)" in str(s) for s in logged), 10, str(logged))
    # four tries (0.2 + 0.4 + 0.8 + 1.6 s) outlast --retry-s (1 s): a paused server is waited for pause_wait_s
    until(lambda: sum("waiting for it" in str(s) for s in logged) >= 4, 20, str(logged))
    assert t.is_alive()
    second = GrpcChannel(address, "fedavg", {}, bulk_port=None)  # the resumed server, on the same address
    try:
        second.wait_for_clients(1, 30)
        ((_, outcome),) = list(second.run(Message("fit", TINY, {}), [Instruction(0, {})], timeout_s=20))
        assert isinstance(outcome, Reply)
    finally:
        second.close()
    t.join(20)
    assert logged[-1] == "the run has ended"

    gone = GrpcChannel("127.0.0.1:0", "fedavg", {}, bulk_port=None)
    out = []
    t = threading.Thread(target=lambda: out.append(_serve_catching(gone.address, Constant(), 0, retry_for_s=1,
                                                                   pause_wait_s=1)), daemon=True)
    t.start()
    gone.wait_for_clients(1, 20)
    gone.close("pausing: the disk is full")
    t.join(30)
    assert isinstance(out[0], TransportError)
    assert "paused (the disk is full) and did not take client 0 back within --pause-wait-s 1s" in str(out[0])


# --- 7. operator errors, and a full registry disk --------------------------------------------------------
def test_a_server_without_a_port_and_a_mismatched_tls_pair_are_one_line_errors(certs, tmp_path):
    with pytest.raises(ConfigError, match="--server is '127.0.0.1'; expected HOST:PORT"):
        serve("127.0.0.1", Constant(), 0)
    other = make_certs(tmp_path / "other", ["127.0.0.1"])
    with pytest.raises(ConfigError, match="is not the private key of"):
        GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=(certs["cert"].read_bytes(), other["key"].read_bytes()))


class FullDisk(Registry):
    def seen(self, client_id):
        raise sqlite3.OperationalError("database or disk is full")


def test_a_full_disk_under_the_registry_refuses_no_client(tmp_path):
    made = make_keys(tmp_path / "keys", 0)
    Registry(tmp_path / "r.sqlite", create=True).allow(0, made["pub"].read_bytes())
    registry = FullDisk(tmp_path / "r.sqlite")
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, registry=registry)
    t = threading.Thread(target=lambda: _serve_catching(channel.address, Constant(), 0,
                                                        credentials=Credentials(key=load_private(made["key"]))), daemon=True)
    t.start()
    try:
        channel.wait_for_clients(1, 20)
        for _ in range(2):  # the signed results would note "last seen" on the full disk
            ((_, outcome),) = list(channel.run(Message("fit", TINY, {}), [Instruction(0, {})], timeout_s=20))
            assert isinstance(outcome, Reply)
        assert channel.available() == [0]
    finally:
        channel.close()
        t.join(20)
        registry.close()


def test_tls_context_helpers_are_unchanged_for_a_real_client(certs):
    """The bulk listener's deadline machinery wraps TLS sockets: a real TLS client still opens both."""
    tls = (certs["cert"].read_bytes(), certs["key"].read_bytes())
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, tls=tls)
    out = []
    t = threading.Thread(target=lambda: out.append(_serve_catching(channel.address, Constant(), 0,
                                                                   credentials=Credentials(tls_ca=certs["ca"].read_bytes()))),
                         daemon=True)
    t.start()
    try:
        channel.wait_for_clients(1, 20)
        until(lambda: channel._sessions[0].bulk_up is not None, 10, "no bulk sockets over TLS")
        assert isinstance(channel._sessions[0].bulk_up, ssl.SSLSocket)
        ((_, outcome),) = list(channel.run(Message("fit", TINY, {}), [Instruction(0, {})], timeout_s=20))
        assert isinstance(outcome, Reply)
    finally:
        channel.close()
        t.join(20)
