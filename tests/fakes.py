"""Clients with scripted behaviour, for loop and channel tests. Module-level so they pickle."""

from __future__ import annotations

import os
import time

import numpy as np

from cohort.core.types import EvaluateResult, FitResult

SHAPE = {"w": (2,), "b": ()}


def start_arrays() -> dict[str, np.ndarray]:
    return {"w": np.zeros(2, np.float32), "b": np.zeros((), np.float32)}


class ScriptedClient:
    """Client ``cid`` returns delta w = [cid, -cid], b = 1, with ``cid + 1`` examples, unless its
    behaviour says otherwise: raise, sysexit, nan, shape, garbage, badcount, zero, huge, keys,
    overflow, sleep, exit."""

    def __init__(self, cid: int, behaviour: str = "ok") -> None:
        self.cid, self.behaviour = cid, behaviour

    def fit(self, arrays, config):
        b = self.behaviour
        if b == "raise":
            raise RuntimeError(f"client {self.cid} broke")
        if b == "sleep":
            time.sleep(60)
        if b == "exit":
            os._exit(3)
        if b == "garbage":
            return "not a FitResult"
        if b == "sysexit":
            raise SystemExit(0)
        w = np.array([self.cid, -self.cid], np.float32)
        if b == "nan":
            w[0] = np.nan
        if b == "shape":
            w = np.zeros(3, np.float32)
        if b == "overflow":
            w = np.full(2, 3e38, np.float32)  # finite, but the model cannot hold the sum with it
        count = {"badcount": "7", "zero": 0, "huge": 10**308}.get(b, self.cid + 1)
        metrics = {"train_loss": float(self.cid)}
        if b == "keys":
            metrics = {"round": 99, "accuracy": 1.0, "big": 10**400, 3: 1.0}
        return FitResult({"w": w, "b": np.array(1.0, np.float32)}, count, metrics)

    def evaluate(self, arrays, config):
        if self.behaviour == "raise":
            raise RuntimeError("cannot evaluate")
        if self.behaviour == "badcount":
            return EvaluateResult("low", np.int64(3), "not a dict")
        return EvaluateResult(float(self.cid), self.cid + 1, {"accuracy": float(arrays["b"]) / 10})


class ScriptedClients:
    """A picklable client_fn: behaviours by client id, "ok" for the rest."""

    def __init__(self, behaviours: dict[int, str] | None = None) -> None:
        self.behaviours = behaviours or {}

    def __call__(self, cid: int) -> ScriptedClient:
        return ScriptedClient(cid, self.behaviours.get(cid, "ok"))


def dropout_mlp():
    """A model with dropout, so seeded torch randomness is part of what backends must agree on."""
    from torch import nn

    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


class Constant:
    """Every client moves w by +1 (one example), whatever it receives."""

    def __call__(self, cid):
        return self

    def fit(self, arrays, config):
        return FitResult({"w": np.ones(1)}, 1)

    def evaluate(self, arrays, config):
        return EvaluateResult(0.0, 1)


class Writer:
    """A client that writes into the arrays it received (it must not reach the global model)."""

    def __init__(self, slow: dict[int, float] | None = None) -> None:
        self.slow = slow or {}

    def __call__(self, cid):
        self.cid = cid
        return self

    def fit(self, arrays, config):
        time.sleep(self.slow.get(self.cid, 0.0))
        wrote = 0.0
        for attempt in (lambda: arrays["w"].__setitem__(..., 1e6),
                        lambda: (arrays["w"].setflags(write=True), arrays["w"].__setitem__(..., 1e6))):
            try:
                attempt()
                wrote += 1.0
            except ValueError:  # read-only, and cannot be made writable
                pass
        arrays["w"] = np.full(2, 1e6, np.float32)  # its own dict: the next client does not see this
        arrays.pop("b")
        return FitResult({"w": np.full(2, 0.5, np.float32), "b": np.array(0.0, np.float32)}, 1, {"wrote": wrote})

    def evaluate(self, arrays, config):
        return EvaluateResult(0.0, 1)


class Sleepy(Constant):
    """Constant, after sleeping ``seconds`` in every fit (a client slower than the heartbeat)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def fit(self, arrays, config):
        time.sleep(self.seconds)
        return super().fit(arrays, config)


class Raw:
    """A hand-driven client stream (plain text, or TLS trusting ``ca``): what an attacker with a recorded
    or forged message can send."""

    def __init__(self, address, ca=None, timeout=30):
        import queue

        import grpc

        from cohort.channel.grpc import federation_pb2_grpc as rpc

        self.ch = (grpc.insecure_channel(address) if ca is None else
                   grpc.secure_channel(address, grpc.ssl_channel_credentials(ca), options=[("grpc.use_local_subchannel_pool", 1)]))
        self.out: queue.Queue = queue.Queue()
        self.replies = rpc.FederationStub(self.ch).Join(iter(self.out.get, None), timeout=timeout)

    def send(self, **kind):
        from cohort.channel.grpc import federation_pb2 as pb

        self.out.put(pb.ClientMessage(**kind))

    def next(self):
        return next(self.replies)

    def close(self):
        self.out.put(None)
        self.replies.cancel()
        self.ch.close()
