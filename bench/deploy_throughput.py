"""Sending a 100 MB model over cohort's gRPC channel, against raw TCP on loopback.

cohort: one GrpcChannel in this process and one `cohort client` process (as in a deployment: two
processes, each with its own interpreter); the timed call sends the model to the client (encoded as
safetensors, streamed in 4 MiB chunks, decoded on the other side) and gets a tiny reply back.
``--same-process`` runs the client as a thread of this process instead. Raw TCP: the same bytes
through one loopback socket to a thread that reads them all. Both best of --repeats.

Run: .venv/bin/python bench/deploy_throughput.py [--mb 100] [--repeats 5]
Writes bench/results/deploy_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cohort import EvaluateResult, FitResult
from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.core.types import Instruction, Message, Reply

ROOT = Path(__file__).resolve().parents[1]


class Tiny:
    """Receives the model, answers with one number: the timing is the way down."""

    def __call__(self, cid):
        return self

    def fit(self, arrays, config):
        return FitResult({"w": np.zeros(1, np.float32)}, 1)

    def evaluate(self, arrays, config):
        return EvaluateResult(0.0, 1)


def tiny(cid: int) -> Tiny:
    return Tiny()


def grpc_seconds(nbytes: int, repeats: int, same_process: bool = False) -> float:
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    if same_process:
        thread = threading.Thread(target=serve, args=(channel.address, Tiny(), 0), kwargs={"log": lambda s: None}, daemon=True)
        thread.start()
    else:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")])}
        client = subprocess.Popen([sys.executable, "-m", "cohort.cli", "client", "--server", channel.address, "--id", "0",
                                   "--app", "deploy_throughput:tiny"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    channel.wait_for_clients(1, 60)
    model = {"model": {"w": np.ones(nbytes // 4, np.float32)}}
    best = float("inf")
    try:
        for r in range(repeats + 1):  # the first is a warm-up
            started = time.perf_counter()
            ((_, reply),) = list(channel.run(Message("fit", model, {"round": r}), [Instruction(0, {})], timeout_s=300))
            took = time.perf_counter() - started
            assert isinstance(reply, Reply), reply
            if r:
                best = min(best, took)
    finally:
        channel.close()
        if same_process:
            thread.join(timeout=30)
        else:
            client.wait(timeout=30)
    return best


def grpc_floor_seconds(nbytes: int, repeats: int, protobuf: bool) -> float:
    """The ceiling of any protocol on grpcio: the same bytes streamed server to client in 4 MiB
    messages by a bare handler, as raw bytes or wrapped in cohort's Chunk message, with nothing else
    done on either side (same frame-size option as cohort's channel)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from cohort.channel.grpc import federation_pb2 as pb
    from cohort.channel.grpc.serde import WIRE_OPTIONS

    data = bytes(nbytes)
    pieces = [data[i:i + 4 * 2**20] for i in range(0, nbytes, 4 * 2**20)]

    def source(request, context):
        for p in pieces:
            yield pb.ServerMessage(chunk=pb.Chunk(data=p)).SerializeToString() if protobuf else p

    options = [*WIRE_OPTIONS, ("grpc.max_receive_message_length", 2**26), ("grpc.max_send_message_length", 2**26)]
    server = grpc.server(ThreadPoolExecutor(2), options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(source)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    best = float("inf")
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        stream = ch.unary_stream("/bench.Floor/Stream")
        for r in range(repeats + 1):
            started = time.perf_counter()
            n = sum(len(pb.ServerMessage.FromString(m).chunk.data) if protobuf else len(m) for m in stream(b""))
            assert n == nbytes
            if r:
                best = min(best, time.perf_counter() - started)
    server.stop(0)
    return best


def tcp_seconds(nbytes: int, repeats: int) -> float:
    payload = np.ones(nbytes // 4, np.float32).tobytes()
    best = float("inf")
    for _ in range(repeats + 1):
        server = socket.create_server(("127.0.0.1", 0))
        got = []

        def receive():
            conn, _ = server.accept()
            with conn:
                n = 0
                buf = bytearray(4 * 2**20)
                while n < len(payload):
                    k = conn.recv_into(buf)
                    if not k:
                        break
                    n += k
                got.append(n)
                conn.sendall(b"k")

        t = threading.Thread(target=receive)
        t.start()
        started = time.perf_counter()
        with socket.create_connection(server.getsockname()) as s:
            s.sendall(payload)
            s.recv(1)
        took = time.perf_counter() - started
        t.join()
        server.close()
        assert got == [len(payload)]
        best = min(best, took)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--same-process", action="store_true", help="run the client as a thread of this process")
    args = p.parse_args()
    nbytes = args.mb * 10**6
    g, t = grpc_seconds(nbytes, args.repeats, args.same_process), tcp_seconds(nbytes, args.repeats)
    floor_raw, floor_pb = grpc_floor_seconds(nbytes, args.repeats, False), grpc_floor_seconds(nbytes, args.repeats, True)
    result = {"date": time.strftime("%Y-%m-%d"), "model_bytes": nbytes, "repeats": args.repeats,
              "client": "a thread of the server's process" if args.same_process else "its own process (cohort client)",
              "grpc_seconds": round(g, 4), "tcp_seconds": round(t, 4),
              "grpc_mb_per_s": round(nbytes / g / 1e6, 1), "tcp_mb_per_s": round(nbytes / t / 1e6, 1),
              "ratio_grpc_over_tcp_throughput": round(t / g, 3), "target": 0.5,
              "bare_grpcio_raw_bytes_seconds": round(floor_raw, 4), "bare_grpcio_raw_bytes_ratio": round(t / floor_raw, 3),
              "bare_grpcio_chunk_messages_seconds": round(floor_pb, 4), "bare_grpcio_chunk_messages_ratio": round(t / floor_pb, 3)}
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "deploy_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
