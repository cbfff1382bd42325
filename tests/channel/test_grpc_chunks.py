"""The gRPC channel streams arrays in bounded chunks: a 64 MB update goes through 4 MB messages, and a
result over the limit is refused as it arrives, ending only that client's session."""

import threading

import numpy as np
import pytest
from deploy_app import big

from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, Instruction, Message, Reply

N = 16 * 2**20  # float32 values: 64 MiB


def federation(max_update_bytes):
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, chunk_bytes=4 * 2**20, max_update_bytes=max_update_bytes)
    outcome = []

    def client():
        try:
            outcome.append(serve(channel.address, big, 0, retry_for_s=5, log=lambda s: None))
        except Exception as e:  # kept for the test to look at
            outcome.append(e)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    thread.outcome = outcome
    channel.wait_for_clients(1, 30)
    return channel, thread


def test_a_64_mb_update_travels_in_4_mb_chunks():
    channel, thread = federation(max_update_bytes=128 * 2**20)
    try:
        message = Message("fit", {"model": {"w": np.zeros(N, np.float32)}}, {"round": 1}, version=3)
        ((pos, reply),) = list(channel.run(message, [Instruction(0, {})], timeout_s=120))
    finally:
        channel.close()
        thread.join(timeout=10)
    assert isinstance(reply, Reply) and reply.version == 3
    w = reply.arrays["model"]["w"]
    assert w.shape == (N,) and w.dtype == np.float32 and float(w.min()) == float(w.max()) == 0.5
    assert channel.bytes_sent == 4 * N and channel.bytes_received == 4 * N
    assert not thread.is_alive() and thread.outcome == ["the run has ended"]  # it left on the server's goodbye


def test_a_result_over_the_limit_is_refused_as_it_arrives():
    channel, thread = federation(max_update_bytes=8 * 2**20)
    try:
        message = Message("fit", {"model": {"w": np.zeros(N, np.float32)}}, {"round": 1})
        ((pos, reply),) = list(channel.run(message, [Instruction(0, {})], timeout_s=120))
        assert isinstance(reply, ClientFailure) and "over the limit of 8388608 bytes" in reply.reason
        assert channel.available() == []  # that client's session is over; the server goes on
    finally:
        channel.close()
        thread.join(timeout=30)
    (error,) = thread.outcome  # the client was told, and stopped rather than reconnect
    assert "turned client 0 away" in str(error) and "over the limit" in str(error)


def test_bad_chunk_sizes_are_refused():
    with pytest.raises(ConfigError, match="chunk_bytes is 10"):
        GrpcChannel("127.0.0.1:0", "fedavg", {}, chunk_bytes=10)


def raw_stream(address, messages):
    """Send ``messages`` on a Join stream as a hostile peer would; return what the server answered."""
    import grpc

    from cohort.channel.grpc import federation_pb2 as pb
    from cohort.channel.grpc import federation_pb2_grpc as rpc

    with grpc.insecure_channel(address) as ch:
        replies = rpc.FederationStub(ch).Join(iter([pb.ClientMessage(**m) for m in messages]), timeout=10)
        out = []
        try:
            for r in replies:
                out.append(r)
                if r.WhichOneof("kind") == "bye":
                    break
        except grpc.RpcError:
            pass
        return out


def test_hostile_streams_are_turned_away_and_the_server_goes_on():
    from cohort.channel.grpc import federation_pb2 as pb

    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    try:
        no_hello = raw_stream(channel.address, [{"chunk": pb.Chunk(data=b"x", last=True)}])
        assert no_hello[0].bye.reason.startswith("refused: the first message must be a Hello")
        negative = raw_stream(channel.address, [{"hello": pb.Hello(client_id=-5)}])
        assert negative[0].bye.reason.startswith("refused:")
        stray = raw_stream(channel.address, [{"hello": pb.Hello(client_id=1)}, {"hello": pb.Hello(client_id=1)}])
        assert stray[0].WhichOneof("kind") == "welcome" and "unexpected hello" in stray[-1].bye.reason
        assert channel.available() == []  # none of them is left registered
        message = Message("fit", {"model": {"w": np.zeros(4, np.float32)}}, {"round": 1})
        ((_, outcome),) = list(channel.run(message, [Instruction(1, {})], timeout_s=2))
        assert isinstance(outcome, ClientFailure) and outcome.reason == "not connected"
    finally:
        channel.close()
