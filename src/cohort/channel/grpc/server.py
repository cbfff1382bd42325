"""The server side: clients dial in and hold one stream each; ``GrpcChannel`` is a Channel over them.

Each connection has an outbound queue (tasks, chunks, the final Bye) drained by the stream's response
iterator, and a reader thread that assembles results from a header and its chunks. A result is
counted against ``max_update_bytes`` as its chunks arrive and refused before it is buffered whole.
Every wait has a deadline; a client that drops fails its tasks as transport failures.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc

from cohort.channel.base import groups_nbytes, reply_nbytes
from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc import federation_pb2_grpc as rpc
from cohort.channel.grpc.serde import chunks_of, outcome_from, pack, unpack
from cohort.core.errors import ConfigError, TransportError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, Reply

CHUNK_BYTES = 4 * 2**20
MAX_UPDATE_BYTES = 2**31
_CLOSE = object()


def check_address(address: str, tls: bool = False) -> tuple[str, int]:
    """``host:port``; without TLS only on a loopback interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--address is {address!r}; expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any free port)")
    name = host.strip("[]")
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not tls:
        raise ConfigError(f"--address {address!r} is not a loopback address: serve it with TLS (--tls-cert and "
                          "--tls-key; `cohort certs` makes test certificates). Without TLS only 127.0.0.1, "
                          "localhost or [::1] are served")
    return host, int(port)


class _Session:
    """One connected client."""

    def __init__(self, client_id: int, name: str) -> None:
        self.client_id, self.name = client_id, name
        self.outbound: queue.Queue = queue.Queue()
        self.pending: set[int] = set()  # task ids sent and not answered
        self.alive = True
        self.last_seen = time.monotonic()


class GrpcChannel:
    """A Channel whose clients are processes that dialed in (``cohort client``). Each connected client
    holds one of ``threads`` server threads for its stream: give at least one per client."""

    def __init__(self, address: str, algorithm: str, algorithm_settings: dict[str, Any], *,
                 chunk_bytes: int = CHUNK_BYTES, max_update_bytes: int = MAX_UPDATE_BYTES, threads: int = 64,
                 tls: tuple[bytes, bytes] | None = None) -> None:
        """``tls``: the server's (certificate chain, private key) in PEM; None serves plain text on loopback."""
        host, port = check_address(address, tls is not None)
        if not 1024 <= chunk_bytes <= 64 * 2**20:
            raise ConfigError(f"chunk_bytes is {chunk_bytes}; expected 1 KiB to 64 MiB")
        self.algorithm, self.algorithm_settings = algorithm, algorithm_settings
        self.chunk_bytes, self.max_update_bytes = chunk_bytes, max_update_bytes
        self.bytes_sent = self.bytes_received = 0
        self.max_held = 0
        self._sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()
        self._results: queue.Queue = queue.Queue()  # (task_id, client_id, outcome)
        self._task_ids = itertools.count(1)
        limit = chunk_bytes + 2**16
        self._server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cohort-grpc"),
                                   options=[("grpc.max_receive_message_length", limit),
                                            ("grpc.max_send_message_length", limit)])
        rpc.add_FederationServicer_to_server(_Servicer(self), self._server)
        if tls is not None:
            bound = self._server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(tls[1], tls[0])]))
        else:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise ConfigError(f"cannot listen on {address!r} (in use, or not an address of this machine)")
        self.address = f"{host}:{bound}"
        self._server.start()

    # --- the registry ---------------------------------------------------------------------------
    def available(self) -> list[int]:
        with self._lock:
            return sorted(cid for cid, s in self._sessions.items() if s.alive)

    def wait_for_clients(self, count: int, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while len(self.available()) < count:
            if time.monotonic() > deadline:
                raise TransportError(f"only {len(self.available())} of {count} clients connected within {timeout_s:.0f}s "
                                     f"(connected: {self.available()[:20]}); start them with "
                                     f"`cohort client --server {self.address} ...`")
            time.sleep(0.05)
        return self.available()

    def _join(self, session: _Session) -> str | None:
        with self._lock:
            old = self._sessions.get(session.client_id)
            if old is not None and old.alive:
                return f"client id {session.client_id} is already connected"
            self._sessions[session.client_id] = session
        return None

    def _leave(self, session: _Session, why: str, refuse: bool = False) -> None:
        """End ``session``: its tasks in flight fail with ``why``; with ``refuse``, the client is told
        (a Bye starting "refused:") so that it stops instead of reconnecting."""
        if refuse and session.alive:
            session.outbound.put(pb.ServerMessage(bye=pb.Bye(reason=f"refused: {why}")))
        with self._lock:
            session.alive = False
            if self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]
            lost = list(session.pending)
            session.pending.clear()
        for task_id in lost:
            self._results.put((task_id, session.client_id, ClientFailure(session.client_id, FailureStage.TRANSPORT, why)))
        session.outbound.put(_CLOSE)

    # --- the Channel --------------------------------------------------------------------------
    def run(self, message: Message, instructions: Sequence[Instruction], timeout_s: float | None = None
            ) -> Iterator[tuple[int, Any]]:
        blob = pack(message.arrays)
        pieces = list(chunks_of(blob, self.chunk_bytes))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waiting: dict[int, int] = {}  # task id -> position
        arrived: dict[int, Any] = {}
        for pos, ins in enumerate(instructions):
            with self._lock:
                session = self._sessions.get(ins.client_id)
                if session is not None and session.alive:
                    task_id = next(self._task_ids)
                    session.pending.add(task_id)
            if session is None or not session.alive:
                arrived[pos] = ClientFailure(ins.client_id, FailureStage.TRANSPORT, "not connected")
                continue
            config = {**message.config, **ins.config}
            meta = json.dumps({"config": config})
            session.outbound.put(pb.ServerMessage(task=pb.Header(task_id=task_id, task=message.task, version=message.version,
                                                                 meta=meta, payload_bytes=len(blob))))
            for piece, last in pieces:
                session.outbound.put(pb.ServerMessage(chunk=pb.Chunk(data=piece, last=last)))
            self.bytes_sent += groups_nbytes(message.arrays)
            waiting[task_id] = pos
        next_yield = 0
        while next_yield < len(instructions):
            while next_yield in arrived:
                yield next_yield, arrived.pop(next_yield)
                next_yield += 1
            if next_yield >= len(instructions):
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                task_id, cid, outcome = self._results.get(timeout=remaining)
            except queue.Empty:  # the deadline: whatever has not come is a timeout; late results are discarded
                for task_id, pos in waiting.items():
                    ins = instructions[pos]
                    arrived.setdefault(pos, ClientFailure(ins.client_id, FailureStage.TIMEOUT,
                                                         f"no result within the {timeout_s}s round deadline"))
                expired = set(waiting)
                waiting.clear()
                with self._lock:
                    for s in self._sessions.values():
                        s.pending -= expired
                continue
            pos = waiting.pop(task_id, None)
            if pos is None:
                continue  # a late result of an earlier round: discarded
            if isinstance(outcome, Reply):  # the version it was computed from is the one sent, whatever it claims
                outcome = replace(outcome, version=message.version)
            self.bytes_received += reply_nbytes(outcome)
            arrived[pos] = outcome
            self.max_held = max(self.max_held, len(arrived))

    def close(self, reason: str = "the run has ended") -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.outbound.put(pb.ServerMessage(bye=pb.Bye(reason=reason)))
            s.outbound.put(_CLOSE)
        deadline = time.monotonic() + 5
        while any(not s.outbound.empty() for s in sessions) and time.monotonic() < deadline:
            time.sleep(0.02)  # let the goodbyes go out
        self._server.stop(grace=2).wait(5)


class _Servicer(rpc.FederationServicer):
    def __init__(self, channel: GrpcChannel) -> None:
        self.channel = channel

    def Join(self, request_iterator, context):
        ch = self.channel
        try:
            first = next(request_iterator)
        except (StopIteration, grpc.RpcError):
            return
        if first.WhichOneof("kind") != "hello" or first.hello.client_id < 0:
            yield pb.ServerMessage(bye=pb.Bye(reason="refused: the first message must be a Hello with a client id >= 0"))
            return
        session = _Session(int(first.hello.client_id), first.hello.name[:200])
        refused = ch._join(session)
        if refused:
            yield pb.ServerMessage(bye=pb.Bye(reason=f"refused: {refused}"))
            return
        reader = threading.Thread(target=self._read, args=(session, request_iterator), daemon=True,
                                  name=f"cohort-client-{session.client_id}")
        reader.start()
        context.add_callback(lambda: ch._leave(session, "the connection was lost"))
        yield pb.ServerMessage(welcome=pb.Welcome(algorithm=ch.algorithm, algorithm_settings=json.dumps(ch.algorithm_settings),
                                                  chunk_bytes=ch.chunk_bytes, max_update_bytes=ch.max_update_bytes))
        while True:
            item = session.outbound.get()
            if item is _CLOSE:
                return
            yield item

    def _read(self, session: _Session, requests) -> None:
        """Assemble results; anything malformed ends this client's session, never the server."""
        ch = self.channel
        header, parts, size = None, [], 0
        try:
            for msg in requests:
                session.last_seen = time.monotonic()
                kind = msg.WhichOneof("kind")
                if kind == "result":
                    header, parts, size = msg.result, [], 0
                    if header.payload_bytes > ch.max_update_bytes:  # declared too big: refused before any byte
                        self._deliver(session, header, ClientFailure(
                            session.client_id, FailureStage.VALIDATE,
                            f"result of {header.payload_bytes} bytes over the limit of {ch.max_update_bytes} bytes (max_update_bytes)"))
                        ch._leave(session, f"announced a result over the limit of {ch.max_update_bytes} bytes", refuse=True)
                        return
                elif kind == "chunk" and header is not None:
                    size += len(msg.chunk.data)
                    if size > ch.max_update_bytes:  # refused before it is buffered whole
                        self._deliver(session, header, ClientFailure(
                            session.client_id, FailureStage.VALIDATE,
                            f"result over the limit of {ch.max_update_bytes} bytes (max_update_bytes)"))
                        header, parts = None, []
                        ch._leave(session, f"sent a result over the limit of {ch.max_update_bytes} bytes", refuse=True)
                        return
                    parts.append(msg.chunk.data)
                    if msg.chunk.last:
                        self._deliver(session, header, self._decode(session, header, b"".join(parts)))
                        header, parts, size = None, [], 0
                else:
                    ch._leave(session, f"sent an unexpected {kind or 'empty'} message", refuse=True)
                    return
        except grpc.RpcError:
            pass
        except Exception as e:  # a hostile or broken peer
            ch._leave(session, f"sent a malformed stream: {type(e).__name__}: {e}", refuse=True)
            return
        ch._leave(session, "the connection was closed")

    def _decode(self, session: _Session, header, blob: bytes):
        try:
            meta = json.loads(header.meta or "{}")
            return outcome_from(meta, unpack(blob), session.client_id, int(header.version))
        except (ValueError, TransportError) as e:
            return ClientFailure(session.client_id, FailureStage.VALIDATE, f"malformed result: {e}")

    def _deliver(self, session: _Session, header, outcome) -> None:
        task_id = int(header.task_id)
        with self.channel._lock:
            if task_id not in session.pending:
                return  # unknown or late: discarded
            session.pending.discard(task_id)
        self.channel._results.put((task_id, session.client_id, outcome))
