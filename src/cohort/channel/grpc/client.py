"""The client process: dial the server, say who it is, run the tasks it is sent, keep its own state.

The client's per-client state (SCAFFOLD's cᵢ, ...) lives here, in this process, across rounds and
reconnections. A lost connection is retried with capped exponential backoff.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Callable

import grpc

from cohort.algorithms import ALGORITHMS
from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc import federation_pb2_grpc as rpc
from cohort.channel.grpc.serde import chunks_of, outcome_meta, pack, unpack
from cohort.channel.runtime import run_client
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, FailureStage, Message

BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 10.0


class _Lost(Exception):
    """The stream ended without the server's goodbye."""


def serve(address: str, client_fn: Callable, client_id: int, *, name: str = "", retry_for_s: float = 60.0,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True), tls_ca: bytes | None = None) -> str:
    """Run client ``client_id`` against the server at ``address`` until it says goodbye; returns its reason.
    Raises TransportError once the server could not be reached for ``retry_for_s`` seconds."""
    if not (isinstance(client_id, int) and client_id >= 0):
        raise ConfigError(f"--id is {client_id!r}; expected an integer >= 0")
    state = None  # this client's own state, kept across rounds and reconnections
    delay, gave_up_at = BACKOFF_START_S, time.monotonic() + retry_for_s
    while True:
        try:
            reason, state = _session(address, client_fn, client_id, name, state, log, tls_ca)
            if reason.startswith("refused:"):
                raise TransportError(f"the server at {address} turned client {client_id} away: {reason[9:].strip()}")
            return reason
        except _Lost as e:
            if time.monotonic() > gave_up_at:
                raise TransportError(f"the server at {address} keeps closing the connection: {e}") from e
            log(f"client {client_id}: {e}; reconnecting in {delay:.1f}s")
            time.sleep(delay)
            delay = min(BACKOFF_MAX_S, delay * 2)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
                raise TransportError(f"the server at {address} refused the connection: {e.code().name}: {e.details()}") from e
            if time.monotonic() > gave_up_at:
                raise TransportError(f"cannot reach the server at {address} (tried for {retry_for_s:.0f}s): "
                                     f"{e.code().name}: {e.details()}") from e
            log(f"client {client_id}: connection to {address} lost ({e.code().name}); retrying in {delay:.1f}s")
            time.sleep(delay)
            delay = min(BACKOFF_MAX_S, delay * 2)


def _session(address, client_fn, client_id, name, state, log, tls_ca=None):
    outgoing: queue.Queue = queue.Queue()
    outgoing.put(pb.ClientMessage(hello=pb.Hello(client_id=client_id, name=name)))

    def requests():
        while True:
            item = outgoing.get()
            if item is None:
                return
            yield item

    limit = 64 * 2**20 + 2**16
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    opened = (grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_ca), options=options)
              if tls_ca is not None else grpc.insecure_channel(address, options=options))
    with opened as channel:
        stream = rpc.FederationStub(channel).Join(requests())
        half, chunk_bytes, header, parts = None, 4 * 2**20, None, []
        try:
            for msg in stream:
                kind = msg.WhichOneof("kind")
                if kind == "welcome":
                    settings = json.loads(msg.welcome.algorithm_settings or "{}")
                    if msg.welcome.algorithm not in ALGORITHMS:
                        raise ConfigError(f"the server runs algorithm {msg.welcome.algorithm!r}, which this client "
                                          f"does not know (it knows {', '.join(ALGORITHMS)})")
                    half = ALGORITHMS[msg.welcome.algorithm](**settings).client
                    chunk_bytes = int(msg.welcome.chunk_bytes) or chunk_bytes
                    log(f"client {client_id}: joined {address} ({msg.welcome.algorithm})")
                elif kind == "bye":
                    return msg.bye.reason, state
                elif kind == "task":
                    header, parts = msg.task, []
                elif kind == "chunk" and header is not None:
                    parts.append(msg.chunk.data)
                    if msg.chunk.last:
                        state = _answer(header, b"".join(parts), half, client_fn, client_id, state, outgoing, chunk_bytes)
                        header, parts = None, []
        finally:
            outgoing.put(None)
    raise _Lost("the server closed the stream without a goodbye")


def _answer(header, blob, half, client_fn, client_id, state, outgoing, chunk_bytes):
    config = json.loads(header.meta or "{}").get("config", {})
    message = Message(header.task, unpack(blob), config, int(header.version))
    if half is None:
        outcome, new_state = ClientFailure(client_id, FailureStage.TRANSPORT, "a task came before the welcome"), state
    else:
        outcome, new_state = run_client(client_fn, half, client_id, message, state)
    meta, groups = outcome_meta(outcome)
    payload = pack(groups) if groups else b""
    outgoing.put(pb.ClientMessage(result=pb.Header(task_id=header.task_id, task=header.task, version=header.version,
                                                   meta=json.dumps(meta), payload_bytes=len(payload))))
    for piece, last in chunks_of(payload, chunk_bytes):
        outgoing.put(pb.ClientMessage(chunk=pb.Chunk(data=piece, last=last)))
    return new_state
