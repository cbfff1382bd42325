"""A client's own state (SCAFFOLD's cᵢ) outlives a lost connection: the client reconnects and its
next update is the one it would have sent had the connection never dropped."""

import threading
import time

import numpy as np

from cohort.algorithms.scaffold import CONTROL
from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.config import load_config
from cohort.core.types import MODEL, Instruction, Message, Reply
from cohort.experiment import build


def last_update(rounds=(1, 2), drop_between: bool = False) -> dict:
    experiment = build(load_config(None, ["data.num_clients=3", "server.algorithm=scaffold"]))
    client_fn = experiment.client_fn()
    model = experiment.framework.initial_arrays(experiment.model_fn, 0)
    control = {k: np.zeros_like(v) for k, v in model.items()}
    channel = GrpcChannel("127.0.0.1:0", "scaffold", {})
    t = threading.Thread(target=serve, args=(channel.address, client_fn, 1), kwargs={"log": lambda s: None, "retry_for_s": 10},
                         daemon=True)
    t.start()
    replies = []
    try:
        for r in rounds:
            channel.wait_for_clients(1, 20)
            message = Message("fit", {MODEL: model, CONTROL: control}, {"round": r}, version=r)
            ((_, reply),) = list(channel.run(message, [Instruction(1, {})], timeout_s=30))
            assert isinstance(reply, Reply), reply
            replies.append(reply)
            if drop_between and r == 1:
                (session,) = channel._sessions.values()
                channel._leave(session, "dropped by the test")
                deadline = time.monotonic() + 10
                while channel.available() and time.monotonic() < deadline:
                    time.sleep(0.01)
    finally:
        channel.close()
        t.join(20)
    return replies[-1].arrays


def test_a_dropped_client_keeps_its_control_variate():
    steady, dropped = last_update(), last_update(drop_between=True)
    for group in (MODEL, CONTROL):
        for k in steady[group]:
            np.testing.assert_array_equal(steady[group][k], dropped[group][k])
    # and cᵢ was really in use: a client that lost it (round 2 with cᵢ = 0) sends another update
    fresh = last_update(rounds=(2,))
    assert any(not np.array_equal(steady[CONTROL][k], fresh[CONTROL][k]) for k in steady[CONTROL])
