"""A hostile client for the hostile-client suite: `cohort client --app evil_app:client_fn --id 3 ...`.

It holds one of the demo's four clients' data and trains honestly, except that each round from 2 on
it makes one attack (``ATTACKS``, by the round number its task carries): on the arithmetic of its
update (a finite bias of 3e38, ×10, ×10⁶, a sign flip, NaN) and on the wire (a reply that never
comes while it keeps heartbeating, a slow drip of bytes, and an announced size of 1 GiB). The wire
attacks replace the client process's own ``_answer`` (run a task, send its result).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

ATTACKS = {2: "finite 3e38", 3: "x10", 4: "x1e6", 5: "sign flip", 6: "nan", 7: "never replies", 8: "slow drip",
           9: "oversize announcement"}
ONE = os.environ.get("EVIL_ATTACK", "")  # bench/hostile.py: this one attack in every round from 2 on


def attack_of(round_: int) -> str:
    if ONE:
        return ONE if round_ >= 2 else ""
    return ATTACKS.get(round_, "")
NUM_CLIENTS = 4
DRIP_S = 25.0  # how long the slow drip goes on before it gives up (its result is never finished)

_demo = None


def _poisoned(delta: dict, attack: str) -> dict:
    out = {}
    for name, a in delta.items():
        a = np.asarray(a)
        if attack == "finite 3e38":
            b = np.full_like(a, 3e38)  # a finite bias as large as float32 goes
        elif attack == "x10":
            b = a * np.asarray(10, a.dtype)
        elif attack == "x1e6":
            b = a * np.asarray(1e6, a.dtype)
        elif attack == "sign flip":
            b = -a
        elif attack == "nan":
            b = a.copy()
            b.reshape(-1)[0] = np.nan
        else:
            b = a
        out[name] = b
    return out


def client_fn(cid: int):
    global _demo
    _install()
    if _demo is None:
        from cohort.config import load_config
        from cohort.experiment import build

        _demo = build(load_config(None, [f"data.num_clients={NUM_CLIENTS}"])).client_fn()
    client = _demo(cid)
    train = client.train

    def evil_train(arrays, config, hooks):
        trained = train(arrays, config, hooks)
        attack = attack_of(int(config.get("round", 0)))
        if attack in ("finite 3e38", "x10", "x1e6", "sign flip", "nan"):
            from dataclasses import replace

            trained = replace(trained, delta=_poisoned(trained.delta, attack))
        return trained

    client.train = evil_train
    return client


def _install() -> None:
    """The wire attacks: this process's ``_answer`` runs the task, then misbehaves in sending it
    (from the task after the first, which runs this client_fn)."""
    from cohort.channel.grpc import client as wire
    from cohort.channel.grpc import federation_pb2 as pb

    honest = wire._answer
    if getattr(honest, "evil", False):
        return

    def answer(header, parts, half, fn, client_id, kept, link):
        config = json.loads(header.meta or "{}").get("config", {})
        attack = attack_of(int(config.get("round", 0))) if header.task == "fit" else ""
        if attack == "never replies":  # it heartbeats on, and never answers this task
            return
        if attack == "oversize announcement":  # 1 GiB announced for a model of a few hundred bytes
            link.seq += 1
            link.outgoing.put(pb.ClientMessage(result=pb.Header(
                task_id=header.task_id, task=header.task, version=header.version, meta="{}", payload_bytes=2**30,
                seq=link.seq, bulk=False)))
            piece, sent, stuck = bytes(2**16), 0, time.monotonic()
            while sent < 2**30 and time.monotonic() - stuck < 5:  # and it sends it all, if the server takes it
                if link.outgoing.qsize() > 64:  # the stream is not being read (refused): it gives up after 5 s
                    time.sleep(0.01)  # pacing of the attacker's own sending, not a synchronisation
                    continue
                sent += len(piece)
                link.outgoing.put(pb.ClientMessage(chunk=pb.Chunk(data=piece, last=sent >= 2**30)))
                stuck = time.monotonic()
            return
        if attack == "slow drip":  # a real result's bytes, a few at a time, never finished
            from cohort.channel.grpc.serde import encode

            payload = b"".join(encode({"model": {"w": np.zeros(1000, np.float32)}}, 2**20)[1])
            link.seq += 1
            link.outgoing.put(pb.ClientMessage(result=pb.Header(
                task_id=header.task_id, task=header.task, version=header.version, meta="{}",
                payload_bytes=len(payload), seq=link.seq, bulk=False)))
            deadline = time.monotonic() + DRIP_S
            i = 0
            while time.monotonic() < deadline and i < len(payload) - 8:
                link.outgoing.put(pb.ClientMessage(chunk=pb.Chunk(data=payload[i:i + 8], last=False)))
                i += 8
                time.sleep(0.5)  # the drip's pace is the attack itself, not a synchronisation
            return
        honest(header, parts, half, fn, client_id, kept, link)

    answer.evil = True
    wire._answer = answer
