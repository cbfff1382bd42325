"""The server side: clients dial in and hold one stream each; ``GrpcChannel`` is a Channel over them.

The channel keeps the connected sessions, sends tasks, routes each result to the call that sent its
task, and watches heartbeats. What happens on one connection (the handshake, assembling, limiting
and verifying results) is in ``session.py``. Every wait has a deadline; a client that drops fails
its tasks as transport failures.
"""

from __future__ import annotations

import itertools
import json
import queue
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc

from cohort.channel.base import groups_nbytes, reply_nbytes
from cohort.channel.grpc import bulk
from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc.address import check_address
from cohort.channel.grpc.admission import HELLO_S, QUOTA, Admission
from cohort.channel.grpc.certs import check_pair
from cohort.channel.grpc.registry import Registry, RunLog
from cohort.channel.grpc.serde import WIRE_OPTIONS, cut, layout
from cohort.channel.grpc.session import CLOSE, BulkTask, Servicer, Session, register
from cohort.channel.stragglers import RoundClock, StragglerRule
from cohort.core.errors import ConfigError, TransportError
from cohort.core.records import merged
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, Reply
from cohort.governance.audit import arrays_digest, audit_fields

CHUNK_BYTES = 4 * 2**20
MAX_UPDATE_BYTES = 2**31  # this class's default; `cohort server` derives its limit from the model (limits.py)
HEARTBEAT_S = 5.0
HANDSHAKE_S = HELLO_S  # a stream's hello (and proof) must be through within this (admission.py)
CONNECT_S = 10.0  # a TCP connection's TLS and HTTP/2 handshake must be through within this (gRPC core's default: 120 s)
SPARE_STREAMS = 8  # beyond clients and the pre-authentication quota: reconnections that overlap their old stream
ENDED = "the run has ended"
PAUSING = "pausing:"  # a goodbye starting so: the server stops and will be resumed; its clients wait for it


MAX_PENDING_AUDIT = 100_000  # audit entries held before the run folder exists (a channel never given one keeps no more)


class GrpcChannel:
    """A Channel whose clients are processes that dialed in (``cohort client``). Each connected client
    holds one of ``threads`` server threads for its stream: give one per client (``num_clients``, when
    given, is used instead). Connections still in their hello have ``preauth_quota`` threads of their
    own beside those (``admission.py``), so they can never crowd out a registered client.

    ``tls``: the server's (certificate chain, private key) in PEM; None serves plain text on loopback.
    ``client_ca``: with TLS, require client certificates signed by this CA (mutual TLS).
    ``registry``: a :class:`Registry`; every client must then prove it holds its registered key.
    ``heartbeat_s``: clients ping this often; one silent for three periods is marked offline.
    ``handshake_s``: a stream that has not finished its hello (and proof) by then is closed.
    ``connect_s``: a TCP connection that has not finished its TLS and HTTP/2 handshake by then is closed.
    ``max_update_bytes``: the largest result accepted (refused by its announced size, before any byte
    is buffered); :meth:`set_max_update_bytes` changes it once the model is known.
    ``goodbye``: what :meth:`close` tells the clients when given no reason (called then; None: the run
    has ended). A reason starting ``"pausing:"`` tells them to wait for a resumed server.
    ``num_clients``: client ids go from 0 to ``num_clients - 1`` (the config's ``data.num_clients``).
    ``bulk_port``: payloads go on bulk sockets (``bulk.py``) to this port of the same host, for the
    clients that can open them (0: any free port; None: none, every payload in chunks on the stream).
    """

    def __init__(self, address: str, algorithm: str, algorithm_settings: dict[str, Any], *,
                 chunk_bytes: int = CHUNK_BYTES, max_update_bytes: int = MAX_UPDATE_BYTES, threads: int = 64,
                 tls: tuple[bytes, bytes] | None = None, client_ca: bytes | None = None,
                 registry: Registry | None = None, heartbeat_s: float = HEARTBEAT_S, handshake_s: float = HANDSHAKE_S,
                 log: RunLog | None = None, num_clients: int | None = None, bulk_port: int | None = 0,
                 preauth_quota: int = QUOTA, connect_s: float = CONNECT_S, goodbye=None,
                 declaration: dict[str, Any] | None = None) -> None:
        host, port = check_address(address, tls is not None, registry is not None)
        if not 1024 <= chunk_bytes <= 64 * 2**20:
            raise ConfigError(f"chunk_bytes is {chunk_bytes}; expected 1 KiB to 64 MiB")
        for what, v in (("heartbeat_s", heartbeat_s), ("handshake_s", handshake_s), ("connect_s", connect_s)):
            if not (isinstance(v, (int, float)) and 0.05 <= v <= 3600):
                raise ConfigError(f"{what} is {v!r}; expected seconds from 0.05 to 3600")
        if bulk_port is not None and not (isinstance(bulk_port, int) and 0 <= bulk_port <= 65535):
            raise ConfigError(f"bulk_port is {bulk_port!r}; expected a port from 0 (any free one) to 65535, or None (none)")
        if client_ca is not None and tls is None:
            raise ConfigError("client certificates (mutual TLS) need the server's own TLS certificate and key too")
        if tls is not None:
            check_pair(tls[0], tls[1], "the TLS certificate", "the TLS private key")
        self.algorithm, self.algorithm_settings = algorithm, algorithm_settings
        self.run_declaration = json.dumps(declaration or {}, sort_keys=True)  # in every welcome, for the sites' policies
        self.chunk_bytes = chunk_bytes
        self.set_max_update_bytes(max_update_bytes)
        self._goodbye = goodbye
        self.stragglers: StragglerRule | None = None  # a round's deadline from its own pace (set_stragglers)
        self.registry, self.log = registry, log if log is not None else RunLog()
        self.heartbeat_s, self.handshake_s = float(heartbeat_s), float(handshake_s)
        self.num_clients = num_clients
        self.message_config: dict[str, Any] = {}  # added to every task's config (a site federation's agreement)
        self.audit = None  # the run folder's audit.jsonl, once attached (governance/audit.py)
        self._pending_audit: list[dict[str, Any]] | None = []  # entries before the folder exists (the data agreement)
        self.run_id = secrets.token_hex(8)  # this server process's tasks, in both ends' audit logs (task ids restart)
        self._asked: dict[int, tuple[int, str, Any, str]] = {}  # task id -> (client, task, round, arrays digest), for the audit
        self.bytes_sent = self.bytes_received = 0
        self.max_held = 0
        self._sessions: dict[int, Session] = {}
        self.admission = Admission(preauth_quota, self.handshake_s)  # the connections still in their hello
        self._bulk_tokens: dict[bytes, Session] = {}  # tokens given out whose sockets are not all open
        self._lock = threading.Lock()
        self._routes: dict[int, queue.Queue] = {}  # task id -> where its outcome goes (run()'s own, or _submitted)
        self._submitted: queue.Queue = queue.Queue()  # outcomes of submit()ted tasks, for collect()
        self._versions: dict[int, int] = {}  # submitted task id -> the model version it was sent
        self._task_ids = itertools.count(1)
        self._stopped = threading.Event()
        limit = chunk_bytes + 2**16
        # a thread per registered client, the pre-authentication quota, and reconnections that overlap
        self.streams = (num_clients if num_clients is not None else threads) + preauth_quota + SPARE_STREAMS
        self._server = grpc.server(ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="cohort-grpc"),
                                   options=[*WIRE_OPTIONS, ("grpc.max_receive_message_length", limit),
                                            ("grpc.max_send_message_length", limit),
                                            ("grpc.keepalive_permit_without_calls", 1),
                                            ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
                                            ("grpc.http2.max_ping_strikes", 0),
                                            ("grpc.server_handshake_timeout_ms", int(connect_s * 1000))],
                                   maximum_concurrent_rpcs=self.streams)
        register(Servicer(self), self._server)
        if tls is not None:
            creds = grpc.ssl_server_credentials([(tls[1], tls[0])], root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            bound = self._server.add_secure_port(f"{host}:{port}", creds)
        else:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise ConfigError(f"cannot listen on {address!r} (in use, or not an address of this machine)")
        self.address = f"{host}:{bound}"
        self._bulk = None
        if bulk_port is not None:
            try:
                self._bulk = bulk.Listener(host, bulk_port, bulk.server_context(tls, client_ca) if tls else None,
                                           self._attach_bulk, self.handshake_s)
            except BaseException:
                self._server.stop(0)
                raise
        self.bulk_port = self._bulk.port if self._bulk else 0
        self._server.start()
        self._monitor = threading.Thread(target=self._watch, daemon=True, name="cohort-heartbeats")
        self._monitor.start()

    def set_max_update_bytes(self, max_update_bytes: int) -> None:
        """The largest result accepted from now on (``limits.update_limit`` derives it from the model)."""
        if not (isinstance(max_update_bytes, int) and not isinstance(max_update_bytes, bool) and max_update_bytes >= 1):
            raise ConfigError(f"max_update_bytes is {max_update_bytes!r}; expected an integer >= 1")
        self.max_update_bytes = max_update_bytes

    def attach_folder(self, folder) -> None:
        """The run folder exists: the run log goes to its ``server.sqlite``."""
        from pathlib import Path

        self.log.attach(Path(folder) / "server.sqlite")
        from cohort.governance.audit import AuditLog

        self.audit = AuditLog(Path(folder) / "audit.jsonl")  # what was asked of each client and what came back
        pending, self._pending_audit = self._pending_audit or [], None
        for fields in pending:  # the tasks before the folder existed (a site federation's agreement)
            self.audit.append("result", **fields)

    # --- the registry of connections ------------------------------------------------------------
    def available(self) -> list[int]:
        with self._lock:
            return sorted(cid for cid, s in self._sessions.items() if s.alive)

    def site_policies(self) -> dict[int, tuple[str, str]]:
        """Each connected client's (name, policy as its hello gave it): JSON, or "" for none."""
        with self._lock:
            return {cid: (s.name, s.policy) for cid, s in self._sessions.items() if s.alive}

    def wait_for_clients(self, count: int, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while len(self.available()) < count:
            if time.monotonic() > deadline:
                raise TransportError(f"only {len(self.available())} of {count} clients connected within {timeout_s:.0f}s "
                                     f"(connected: {self.available()[:20]}); start them with "
                                     f"`cohort client --server {self.address} ...`")
            time.sleep(0.05)
        return self.available()

    def _join(self, session: Session) -> None:
        """Register ``session``; an older connection of the same client (it reconnected before the
        server noticed the old one was gone) is closed. With a registry the new one proved the key."""
        with self._lock:
            old = self._sessions.get(session.client_id)
            self._sessions[session.client_id] = session
        if old is not None and old.alive:
            self._leave(old, "replaced by a new connection of the same client")
        self.log.event("joined", session.client_id, session.name)
        self.seen(session.client_id)

    def _attach_bulk(self, token: bytes, direction: bytes, sock) -> bool:
        """A bulk socket proved ``token``: it becomes its session's socket for ``direction``."""
        with self._lock:
            session = self._bulk_tokens.get(token)
            if session is None or not session.alive:
                return False
            if direction == bulk.DOWN and session.bulk_down is None:
                session.bulk_down = sock
            elif direction == bulk.UP and session.bulk_up is None:
                session.bulk_up = sock
            else:
                return False  # a token opens each direction once
            if session.bulk_down is not None and session.bulk_up is not None:
                del self._bulk_tokens[token]
            return True

    def _leave(self, session: Session, why: str, refuse: bool = False) -> None:
        """End ``session``: its tasks in flight fail with ``why``; with ``refuse``, the client is told
        (a Bye starting "refused:") so that it stops instead of reconnecting."""
        with self._lock:
            if not session.alive:
                return
            session.alive = False
            if self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]
            lost = list(session.pending)
            session.pending.clear()
            self._bulk_tokens.pop(session.bulk_token, None)
        if refuse:
            session.outbound.put(pb.ServerMessage(bye=pb.Bye(reason=f"refused: {why}")))
        for task_id in lost:
            self._route(task_id, session.client_id, ClientFailure(session.client_id, FailureStage.TRANSPORT, why))
        session.outbound.put(CLOSE)
        session.close_bulk()
        self.log.event("refused" if refuse else "left", session.client_id, why)
        if not refuse:
            self.seen(session.client_id)

    def seen(self, client_id: int) -> None:
        """Note in the registry when a client was last seen: advisory, so a full disk does not stop the federation."""
        if self.registry is not None:
            try:
                self.registry.seen(client_id)
            except (sqlite3.Error, OSError) as e:
                self.log.event("warning", client_id, f"the registry's last-seen time was not written: {e}")

    def _watch(self) -> None:
        """Heartbeats: a client silent for three periods is offline (its tasks fail now, not at the
        deadline); a connection still in its hello after ``handshake_s`` is closed."""
        while not self._stopped.wait(min(self.heartbeat_s, self.handshake_s) / 4):
            now = time.monotonic()
            with self._lock:
                silent = [s for s in self._sessions.values() if s.alive and now - s.last_seen > 3 * self.heartbeat_s]
            stuck = self.admission.expired()
            for s in silent:
                self._leave(s, f"silent for {now - s.last_seen:.1f}s (no heartbeat); marked offline")
                s.context.cancel()
            for context in stuck:
                context.cancel()

    # --- the Channel --------------------------------------------------------------------------
    def set_stragglers(self, rule: StragglerRule | None) -> None:
        """Close a round's wait for its stragglers by its own pace (:mod:`cohort.channel.stragglers`)."""
        self.stragglers = rule

    def run(self, message: Message, instructions: Sequence[Instruction], timeout_s: float | None = None,
            arrival_order: bool = False) -> Iterator[tuple[int, Any]]:
        """As every Channel; with ``arrival_order`` results are yielded as they arrive (over-selection:
        the caller may stop early, and the tasks still out are then dropped, their results discarded)."""
        results: queue.Queue = queue.Queue()
        waiting, arrived = self._send(message, instructions, results)
        clock = RoundClock(len(waiting), timeout_s, self.stragglers)
        ready = deque(sorted(arrived))  # positions in arrival order
        yielded = 0
        try:
            while yielded < len(instructions):
                if arrival_order:
                    while ready:
                        pos = ready.popleft()
                        yield pos, arrived.pop(pos)
                        yielded += 1
                else:
                    while yielded in arrived:
                        yield yielded, arrived.pop(yielded)
                        yielded += 1
                if yielded >= len(instructions):
                    break
                remaining = clock.remaining()
                try:
                    if remaining is not None and remaining <= 0:
                        raise queue.Empty
                    task_id, cid, outcome = results.get(timeout=remaining)
                except queue.Empty:  # the deadline: whatever has not come is a timeout; late results are discarded
                    for task_id, pos in waiting.items():
                        ins = instructions[pos]
                        arrived.setdefault(pos, ClientFailure(ins.client_id, FailureStage.TIMEOUT, clock.why))
                        ready.append(pos)
                    self._expire(waiting)
                    continue
                pos = waiting.pop(task_id, None)
                if pos is None:
                    continue  # a late result of an earlier round: discarded
                clock.answer()
                if isinstance(outcome, Reply):  # the version it was computed from is the one sent, whatever it claims
                    outcome = replace(outcome, version=message.version)
                self.bytes_received += reply_nbytes(outcome)
                arrived[pos] = outcome
                ready.append(pos)
                self.max_held = max(self.max_held, len(arrived))
        finally:  # the caller stopped early (over-selection) or the round ended: nothing stays pending
            self._expire(waiting)

    def _send(self, message: Message, instructions: Sequence[Instruction], results: queue.Queue
              ) -> tuple[dict[int, int], dict[int, Any]]:
        """Queue ``message`` for each instruction's client; their outcomes will go to ``results``.
        Returns (task id -> position of the tasks sent, position -> failure of the clients not connected)."""
        total, sources = layout(message.arrays)
        auditing = self.audit is not None or self._pending_audit is not None
        sent_digest = arrays_digest(message.arrays) if auditing else ""
        waiting: dict[int, int] = {}
        arrived: dict[int, Any] = {}
        receivers: list[Session] = []
        for pos, ins in enumerate(instructions):
            with self._lock:
                session = self._sessions.get(ins.client_id)
                if session is not None and session.alive:
                    task_id = next(self._task_ids)
                    session.pending.add(task_id)
                    self._routes[task_id] = results
            if session is None or not session.alive:
                arrived[pos] = ClientFailure(ins.client_id, FailureStage.TRANSPORT, "not connected")
                continue
            config = merged(self.message_config, message.config, ins.config)
            if auditing:
                with self._lock:
                    self._asked[task_id] = (ins.client_id, message.task, config.get("round"), sent_digest)
            meta = json.dumps({"config": config, "run": self.run_id})
            header = pb.Header(task_id=task_id, task=message.task, version=message.version, meta=meta, payload_bytes=total)
            if session.bulk_down is not None:  # straight from the arrays' memory, on its own socket
                header.bulk = True
                session.outbound.put(BulkTask(pb.ServerMessage(task=header), total, sources))
            else:
                session.outbound.put(pb.ServerMessage(task=header))
                receivers.append(session)
            self.bytes_sent += groups_nbytes(message.arrays)
            waiting[task_id] = pos
        if receivers:
            # each chunk is cut and serialized once, as it is needed, and the same bytes go to every
            # client (see session.register): the first is on the wire before the last is cut
            pieces = cut(sources, self.chunk_bytes) if total else iter([b""])
            piece = next(pieces)
            for following in itertools.chain(pieces, [None]):
                wire = pb.ServerMessage(chunk=pb.Chunk(data=piece, last=following is None)).SerializeToString()
                for session in receivers:
                    session.outbound.put(wire)
                piece = following
        return waiting, arrived

    def _route(self, task_id: int, client_id: int, outcome: Any) -> None:
        with self._lock:
            results = self._routes.pop(task_id, None)
        self._audit(task_id, outcome)
        if results is not None:
            results.put((task_id, client_id, outcome))

    def _audit(self, task_id: int, outcome: Any) -> None:
        """The audit entry of a task: what was asked, and what came back (or why nothing did)."""
        with self._lock:
            asked = self._asked.pop(task_id, None)
        if asked is None:
            return
        client, task, rnd, sent = asked
        fields = {**audit_fields(task_id, task, rnd, sent, outcome), "client": client, "run": self.run_id}
        if self.audit is None:
            if self._pending_audit is not None and len(self._pending_audit) < MAX_PENDING_AUDIT:
                self._pending_audit.append(fields)
            return
        try:
            self.audit.append("result", **fields)
        except OSError as e:  # a full disk: the run goes on, and says so in its log
            self.log.event("audit_failed", client, f"the audit log could not be written: {e}")

    # --- asynchronous use (FedBuff over gRPC): tasks submitted one by one, outcomes as they arrive --
    def submit(self, message: Message, instruction: Instruction) -> int | None:
        """Send one task; its outcome comes from :meth:`collect`. None: the client is not connected."""
        waiting, _ = self._send(message, [instruction], self._submitted)
        if not waiting:
            return None
        (task_id,) = waiting
        self._versions[task_id] = message.version
        return task_id

    def collect(self, timeout_s: float | None) -> tuple[int, Any] | None:
        """The next submitted task's (task id, outcome), in arrival order; None if none came in time."""
        try:
            task_id, _, outcome = self._submitted.get(timeout=timeout_s)
        except queue.Empty:
            return None
        version = self._versions.pop(task_id, None)
        if isinstance(outcome, Reply) and version is not None:
            outcome = replace(outcome, version=version)
        self.bytes_received += reply_nbytes(outcome)
        return task_id, outcome

    def drop(self, task_ids) -> None:
        """Stop waiting for these submitted tasks: their results are discarded when they arrive."""
        self._expire({t: 0 for t in task_ids})
        for t in task_ids:
            self._versions.pop(t, None)

    def _expire(self, waiting: dict[int, int]) -> None:
        expired = set(waiting)
        waiting.clear()
        for task_id in expired:  # no result will be taken: the audit says so
            self._audit(task_id, None)
        if expired:
            with self._lock:
                for s in self._sessions.values():
                    s.pending -= expired
                for t in expired:
                    self._routes.pop(t, None)

    def close(self, reason: str | None = None) -> None:
        """Say goodbye to every client and stop. ``reason``: what they are told (None: the ``goodbye``
        given at construction decides, else the run has ended); one starting ``"pausing:"`` has them
        wait for a resumed server."""
        if reason is None:
            try:
                reason = self._goodbye() if self._goodbye is not None else ENDED
            except Exception as e:  # whatever went wrong, the clients are not told the run is over
                reason = f"{PAUSING} the server stopped ({type(e).__name__}: {e})"
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.outbound.put(pb.ServerMessage(bye=pb.Bye(reason=reason)))
            s.outbound.put(CLOSE)
        deadline = time.monotonic() + 5
        for s in sessions:  # let the goodbyes go out
            s.done.wait(max(0.0, deadline - time.monotonic()))
        self._stopped.set()
        if self._bulk is not None:
            self._bulk.close()
        for s in sessions:
            s.close_bulk()
        self._server.stop(grace=2).wait(5)
        self.log.event("stopped", None, reason)
