"""An update over the limit is refused without the server's memory growing by its size: a server
process with an 8 MiB limit is sent 256 MiB by a client that first declares a small result (a lying
header) and one that declares the whole size; the server's peak RSS (VmHWM) is read from /proc."""

import subprocess
import sys
import time

import grpc
import pytest

from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc import federation_pb2_grpc as rpc

SERVER = """
import sys, time
from cohort.channel.grpc.server import GrpcChannel
ch = GrpcChannel("127.0.0.1:0", "fedavg", {}, max_update_bytes=8 * 2**20)
print(ch.address, flush=True)
sys.stdin.readline()
ch.close()
"""
CHUNK = 4 * 2**20
SENT = 256 * 2**20


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def attack(address: str, declared: int) -> list:
    data = bytes(CHUNK)

    def messages():
        yield pb.ClientMessage(hello=pb.Hello(client_id=0))
        yield pb.ClientMessage(result=pb.Header(task_id=1, task="fit", meta="{}", payload_bytes=declared, seq=1))
        for _ in range(SENT // CHUNK):
            yield pb.ClientMessage(chunk=pb.Chunk(data=data))

    options = [("grpc.max_send_message_length", 2 * CHUNK)]
    with grpc.insecure_channel(address, options=options) as ch:
        replies = []
        try:
            for r in rpc.FederationStub(ch).Join(messages(), timeout=60):
                replies.append(r)
        except grpc.RpcError:
            pass
        return replies


@pytest.mark.parametrize("declared", [1024, SENT], ids=["lying header", "honest header"])
def test_an_oversized_update_does_not_grow_the_server(declared):
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = server.stdout.readline().strip()
        time.sleep(0.5)
        before = peak_rss_mb(server.pid)
        replies = attack(address, declared)
        after = peak_rss_mb(server.pid)
        assert any(r.WhichOneof("kind") == "bye" and "over the limit" in r.bye.reason for r in replies)
        assert after - before < 64, (before, after)  # 256 MiB were sent at it
        assert server.poll() is None  # and it goes on
    finally:
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(timeout=30)
