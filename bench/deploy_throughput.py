"""Sending a 100 MB model over cohort's gRPC channel, against raw TCP on loopback.

cohort: one GrpcChannel and one client (the `serve` loop `cohort client` runs) in this process;
the timed call sends the model to the client (packed as safetensors, streamed in 4 MiB chunks,
unpacked on the other side) and gets a tiny reply back. Raw TCP: the same bytes through one
loopback socket to a thread that reads them all. Both best of --repeats.

Run: .venv/bin/python bench/deploy_throughput.py [--mb 100] [--repeats 5]
Writes bench/results/deploy_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import socket
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


def grpc_seconds(nbytes: int, repeats: int) -> float:
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {})
    thread = threading.Thread(target=serve, args=(channel.address, Tiny(), 0), kwargs={"log": lambda s: None}, daemon=True)
    thread.start()
    channel.wait_for_clients(1, 30)
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
        thread.join(timeout=30)
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
    args = p.parse_args()
    nbytes = args.mb * 10**6
    g, t = grpc_seconds(nbytes, args.repeats), tcp_seconds(nbytes, args.repeats)
    result = {"date": time.strftime("%Y-%m-%d"), "model_bytes": nbytes, "repeats": args.repeats,
              "grpc_seconds": round(g, 4), "tcp_seconds": round(t, 4),
              "grpc_mb_per_s": round(nbytes / g / 1e6, 1), "tcp_mb_per_s": round(nbytes / t / 1e6, 1),
              "ratio_grpc_over_tcp_throughput": round(t / g, 3), "target": 0.5}
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "deploy_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
