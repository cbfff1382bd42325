"""The client process: dial the server, say who it is, run the tasks it is sent, keep its own state.

The client's per-client state (SCAFFOLD's cᵢ, ...) lives here, in this process, across rounds and
reconnections. A lost connection, and a server too busy to take it (RESOURCE_EXHAUSTED), are retried
with capped exponential backoff for ``retry_for_s``; a server that says it is pausing (stopped to be
resumed) is waited for, the same way, for ``pause_wait_s``.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from cohort.algorithms import ALGORITHMS
from cohort.channel.grpc import bulk
from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc import federation_pb2_grpc as rpc
from cohort.channel.grpc.address import check_server
from cohort.channel.grpc.auth import digest_of, hello_bytes, result_bytes
from cohort.channel.grpc.serde import WIRE_OPTIONS, decode, encode, layout, outcome_meta
from cohort.channel.runtime import run_client
from cohort.core.errors import ConfigError, TransportError
from cohort.core.limits import MAX_TIMEOUT_S
from cohort.core.types import ClientFailure, FailureStage, Message

BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 10.0
PAUSE_WAIT_S = 3600.0  # how long a client waits for a server that said it is pausing
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)
# the server's answers when it is overloaded (its streams full, under a flood): worth another try
OVERLOADED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)
RETRYABLE = TRANSIENT + OVERLOADED
PAUSING = "pausing:"  # the goodbye of a server that stops to be resumed (server.PAUSING)


class _Lost(Exception):
    """The stream ended without the server's goodbye."""

    def __init__(self, text: str, joined: bool) -> None:
        super().__init__(text)
        self.joined = joined


@dataclass(frozen=True)
class Credentials:
    """How a client proves who it is: ``tls_ca`` (PEM) verifies the server; ``tls_cert``/``tls_key``
    (PEM) are this client's certificate for mutual TLS; ``key`` is its Ed25519 private key
    (:func:`cohort.channel.grpc.auth.load_private`), for a server with a registry."""

    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    key: Any = None

    def channel(self, address: str, options) -> grpc.Channel:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: this client's certificate and its private key")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ConfigError("a client certificate (--tls-cert) is for TLS: give the server's CA with --tls-ca too")
        if self.tls_ca is None:
            return grpc.insecure_channel(address, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=self.tls_ca, private_key=self.tls_key,
                                             certificate_chain=self.tls_cert)
        return grpc.secure_channel(address, creds, options=options)

    def ssl_context(self):
        """The same TLS settings for the bulk sockets (None: plain text, as the stream)."""
        return None if self.tls_ca is None else bulk.client_context(self.tls_ca, self.tls_cert, self.tls_key)


def serve(address: str, client_fn: Callable, client_id: int, *, name: str = "", retry_for_s: float = 60.0,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
          credentials: Credentials | None = None, pause_wait_s: float = PAUSE_WAIT_S,
          on_task: Callable[[str, Any], None] = lambda task, outcome: None, gate=None, audit=None) -> str:
    """Run client ``client_id`` against the server at ``address`` until it says goodbye; returns its reason.
    Raises TransportError once the server could not be reached for ``retry_for_s`` seconds, when it
    turns this client away, or when a server that said it is pausing is not back within
    ``pause_wait_s`` seconds (not at all when this client's last task failed: the goodbye is returned).
    ``on_task(task, outcome)`` sees each task's outcome before it is sent. ``gate``: the site's policy at
    work (:class:`cohort.governance.policy.Gate`): its hello carries the policy, the server's welcome
    is held against it, and every task is admitted by it before anything runs. ``audit``: the site's
    :class:`cohort.governance.audit.AuditLog`, which gets an entry for every task before its result
    is sent (a result that cannot be recorded is not sent)."""
    check_server(address)
    if not (isinstance(client_id, int) and not isinstance(client_id, bool) and client_id >= 0):
        raise ConfigError(f"--id is {client_id!r}; expected an integer >= 0")
    for flag, v in (("--retry-s", retry_for_s), ("--pause-wait-s", pause_wait_s)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_TIMEOUT_S):
            raise ConfigError(f"{flag} is {v!r}; expected seconds from 0 to one week")
    credentials = credentials or Credentials()  # plain text: a loopback server without TLS
    kept: dict[str, Any] = {"state": None, "last": None, "gate": gate, "audit": audit}  # this client's own state, across rounds and reconnections

    def noted(task: str, outcome: Any) -> None:
        kept["last"] = outcome
        on_task(task, outcome)

    kept["on_task"], kept["log"] = noted, log
    delay, gave_up_at = BACKOFF_START_S, time.monotonic() + retry_for_s
    paused = ""  # the goodbye of a server that is pausing, while this client waits for it

    def wait(what: str) -> None:
        nonlocal delay
        log(f"client {client_id}: {what}; {'waiting for it: ' if paused else ''}retrying in {delay:.1f}s")
        time.sleep(delay)
        delay = min(BACKOFF_MAX_S, delay * 2)

    def give_up(what: str, error: Exception | None = None):
        if paused:
            return TransportError(f"the server at {address} paused ({paused[len(PAUSING):].strip()}) and did not "
                                  f"take client {client_id} back within --pause-wait-s {pause_wait_s:.0f}s")
        return TransportError(what)

    while True:
        try:
            reason, joined = _session(address, client_fn, client_id, name, kept, log, credentials)
            if reason.startswith("refused:"):
                raise TransportError(f"the server at {address} turned client {client_id} away: {reason[9:].strip()}")
            if not reason.startswith(PAUSING) or isinstance(kept["last"], ClientFailure):
                return reason  # after a failed task a resumed server would only ask again: the caller says why
            # the server stops to be resumed: wait for it, for pause_wait_s from now
            paused, delay, gave_up_at = reason, BACKOFF_START_S, time.monotonic() + pause_wait_s
            wait(f"the server is pausing ({reason[len(PAUSING):].strip()})")
        except _Lost as e:
            if e.joined:  # it was in: the server restarted or the network blinked; a fresh allowance
                paused, delay, gave_up_at = "", BACKOFF_START_S, time.monotonic() + retry_for_s
            if time.monotonic() > gave_up_at:
                raise give_up(f"the server at {address} keeps closing the connection: {e}") from e
            wait(str(e))
        except grpc.RpcError as e:
            if e.code() not in RETRYABLE:
                raise TransportError(f"the server at {address} refused the connection: {e.code().name}: {e.details()}") from e
            if time.monotonic() > gave_up_at:
                raise give_up(f"cannot reach the server at {address} (tried for {retry_for_s:.0f}s): "
                              f"{e.code().name}: {e.details()}") from e
            busy = e.code() in OVERLOADED
            wait(f"the server at {address} is busy ({e.code().name})" if busy
                 else f"connection to {address} lost ({e.code().name})")


def _session(address, client_fn, client_id, name, kept: dict, log, credentials: Credentials):
    outgoing: queue.Queue = queue.Queue()
    gate = kept.get("gate")
    outgoing.put(pb.ClientMessage(hello=pb.Hello(client_id=client_id, name=name,
                                                 policy=gate.policy.to_json() if gate is not None else "")))
    ended = threading.Event()

    def requests():
        while True:
            item = outgoing.get()
            if item is None:
                return
            yield item

    def heartbeat(period: float) -> None:  # pings go out even while this client trains
        while not ended.wait(period):
            outgoing.put(pb.ClientMessage(ping=pb.Ping()))

    limit = 64 * 2**20 + 2**16
    options = [*WIRE_OPTIONS, ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
               ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 10_000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    joined = False
    with credentials.channel(address, options) as channel:
        stream = rpc.FederationStub(channel).Join(requests())
        link = _Link(outgoing, b"", credentials.key)
        half, header, parts = None, None, []
        try:
            for msg in stream:
                kind = msg.WhichOneof("kind")
                if kind == "challenge":
                    if credentials.key is None:
                        raise TransportError(f"the server at {address} requires client keys: start client {client_id} "
                                             "with --key (its private key from `cohort keys new`, whose .pub the "
                                             "server's operator allowed)")
                    link.nonce = bytes(msg.challenge.nonce)
                    outgoing.put(pb.ClientMessage(proof=pb.Proof(
                        signature=credentials.key.sign(hello_bytes(link.nonce, client_id, name)))))
                elif kind == "welcome":
                    settings = json.loads(msg.welcome.algorithm_settings or "{}")
                    if msg.welcome.algorithm not in ALGORITHMS:
                        raise ConfigError(f"the server runs algorithm {msg.welcome.algorithm!r}, which this client "
                                          f"does not know (it knows {', '.join(ALGORITHMS)})")
                    half = ALGORITHMS[msg.welcome.algorithm](**settings).client
                    link.chunk_bytes = int(msg.welcome.chunk_bytes) or link.chunk_bytes
                    if msg.welcome.heartbeat_s > 0:
                        threading.Thread(target=heartbeat, args=(max(0.05, msg.welcome.heartbeat_s),), daemon=True,
                                         name=f"cohort-heartbeat-{client_id}").start()
                    joined = True
                    how = _open_bulk(link, address, msg.welcome, credentials)
                    log(f"client {client_id}: joined {address} ({msg.welcome.algorithm}; {how})")
                    if gate is not None:
                        try:
                            run = json.loads(msg.welcome.run or "{}")
                        except ValueError:
                            run = {}
                        for rule in gate.welcome(msg.welcome.algorithm, run if isinstance(run, dict) else {}, settings):
                            log(f"client {client_id}: this site's policy refuses the server's run, so it refuses "
                                f"every task: {rule}")
                elif kind == "bye":
                    return msg.bye.reason, joined
                elif kind == "task" and msg.task.bulk:
                    if link.down is None:
                        raise _Lost(link.failed or "the server sent a payload on bulk connections this client has not "
                                    "opened", joined)
                    try:
                        payload = bulk.receive(link.down, int(msg.task.task_id), int(msg.task.payload_bytes))
                    except OSError as e:
                        link.lost(e)  # the stream may still say why (a goodbye); if not, it ends too
                        continue
                    _answer(msg.task, [payload], half, client_fn, client_id, kept, link)
                elif kind == "task":
                    header, parts = msg.task, []
                elif kind == "chunk" and header is not None:
                    parts.append(msg.chunk.data)
                    if msg.chunk.last:
                        _answer(header, parts, half, client_fn, client_id, kept, link)
                        header, parts = None, []
        except grpc.RpcError as e:
            if joined and e.code() in TRANSIENT:
                raise _Lost(f"the connection was lost ({e.code().name})", True) from e
            raise
        finally:
            ended.set()
            outgoing.put(None)
            bulk.close(link.down)
            bulk.close(link.up)
    raise _Lost(link.failed or "the server closed the stream without a goodbye", joined)


@dataclass
class _Link:
    """What a connection's results need: where they go, the challenge they are signed against, their count."""

    outgoing: queue.Queue
    nonce: bytes
    key: Any
    seq: int = 0
    chunk_bytes: int = 4 * 2**20
    down: Any = None  # the bulk sockets, when they could be opened
    up: Any = None
    failed: str = ""  # why they were lost

    def lost(self, error: Exception) -> None:
        bulk.close(self.down)
        bulk.close(self.up)
        self.down = self.up = None
        self.failed = f"the bulk connection failed: {error}"


def _open_bulk(link: _Link, address: str, welcome, credentials: Credentials) -> str:
    """Open the bulk sockets the server offers; says how payloads will travel."""
    if not welcome.bulk_port or len(welcome.bulk_token) != bulk.TOKEN_BYTES:
        return "payloads in chunks on the stream"
    host = address.rpartition(":")[0]
    try:
        context = credentials.ssl_context()
        link.down = bulk.connect(host, int(welcome.bulk_port), bytes(welcome.bulk_token), bulk.DOWN, context)
        link.up = bulk.connect(host, int(welcome.bulk_port), bytes(welcome.bulk_token), bulk.UP, context)
    except (OSError, ValueError) as e:  # a firewall, most often: the stream carries everything
        bulk.close(link.down)
        bulk.close(link.up)
        link.down = link.up = None
        return f"bulk connections to port {welcome.bulk_port} failed ({e}); payloads in chunks on the stream"
    return f"payloads on bulk connections to port {welcome.bulk_port}"


def _answer(header, parts, half, client_fn, client_id, kept: dict, link: _Link) -> None:
    """Run one task and send its result; the client's new state is kept at once (in ``kept``), so a
    connection lost while the result goes out does not lose it."""
    meta = json.loads(header.meta or "{}")
    config = meta.get("config", {})
    message = Message(header.task, decode(parts), config, int(header.version))
    gate = kept.get("gate")
    refused = gate.admit(message.task, message.arrays, config) if gate is not None and half is not None else None
    if half is None:
        outcome = ClientFailure(client_id, FailureStage.TRANSPORT, "a task came before the welcome")
    elif refused is not None:  # nothing of this site is computed
        outcome = ClientFailure(client_id, FailureStage.REFUSED, refused)
        kept["log"](f"client {client_id}: {header.task} of round {config.get('round', '?')}: {refused}")
    else:
        outcome, kept["state"] = run_client(client_fn, half, client_id, message, kept["state"])
        if gate is not None:
            outcome = gate.release(header.task, outcome)
    kept["on_task"](header.task, outcome)
    audit = kept.get("audit")
    if audit is not None:  # before it leaves: what came, and exactly what goes back
        from cohort.governance.audit import arrays_digest, audit_fields

        try:
            audit.append("task", **audit_fields(header.task_id, header.task, config.get("round"),
                                                arrays_digest(message.arrays), outcome), run=str(meta.get("run", "")))
        except OSError as e:  # a full disk: what is not recorded does not leave
            outcome = ClientFailure(client_id, FailureStage.REFUSED, f"the site's audit log {audit.path} cannot be "
                                    f"written ({e.strerror or e}); this site sends no result it cannot record")
            kept["log"](f"client {client_id}: {outcome.reason}")
    meta, groups = outcome_meta(outcome)
    if link.up is not None:
        total, pieces = layout(groups)
    else:
        total, pieces = encode(groups, link.chunk_bytes)
        pieces = list(pieces)  # signed whole before the first goes out
    link.seq += 1
    result = pb.Header(task_id=header.task_id, task=header.task, version=header.version, meta=json.dumps(meta),
                       payload_bytes=total, seq=link.seq, bulk=link.up is not None)
    if link.key is not None and link.nonce:
        result.signature = link.key.sign(result_bytes(link.nonce, result, digest_of(pieces)))
    link.outgoing.put(pb.ClientMessage(result=result))
    if link.up is not None:
        try:
            bulk.send(link.up, int(header.task_id), total, pieces)
        except OSError as e:
            link.lost(e)  # the stream may still say why (a refusal); if not, it ends too
        return
    for i, piece in enumerate(pieces):
        link.outgoing.put(pb.ClientMessage(chunk=pb.Chunk(data=piece, last=i == len(pieces) - 1)))
