"""One client's connection to the server: its session, the handshake (hello, challenge, proof), and
the reader that assembles its results, checks their size and signature, and hands them to the channel.

The channel (``server.py``) owns the sessions and the routes of results; this module speaks the wire.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from cohort.channel.grpc import bulk
from cohort.channel.grpc import federation_pb2 as pb
from cohort.channel.grpc import federation_pb2_grpc as rpc
from cohort.channel.grpc.auth import digest_of, hello_bytes, load_public, new_nonce, result_bytes, verify
from cohort.channel.grpc.serde import decode, outcome_from
from cohort.core.errors import TransportError
from cohort.core.types import ClientFailure, FailureStage

MAX_POLICY_CHARS = 64 * 1024  # a site's policy, as JSON, in its hello
CLOSE = object()  # put on a session's outbound queue: its stream ends


class Session:
    """One connected client."""

    def __init__(self, client_id: int, name: str, context) -> None:
        self.client_id, self.name, self.context = client_id, name, context
        self.outbound: queue.Queue = queue.Queue()
        self.pending: set[int] = set()  # task ids sent and not answered
        self.alive = True
        self.last_seen = time.monotonic()
        self.public_key = None  # with a registry: the key this connection proved it holds
        self.nonce = b""
        self.seq = 0  # the last result's sequence number
        self.done = threading.Event()  # its stream has sent everything it will send
        self.bulk_token = b""
        self.bulk_down = self.bulk_up = None  # its bulk sockets, once it opened them
        self.policy = ""  # the site's policy as its hello gave it (JSON; "" for none): the server's pre-check reads it

    def close_bulk(self) -> None:
        bulk.close(self.bulk_down)
        bulk.close(self.bulk_up)


@dataclass(frozen=True)
class BulkTask:
    """On a session's outbound queue: a task header for the stream, then its payload for the bulk socket."""

    message: Any  # the ServerMessage with the Header (bulk = True)
    total: int
    sources: list  # the payload's memory, as serde.layout gives it


def _serialize(message) -> bytes:
    """ServerMessages, or chunks serialized already (bytes): a broadcast is serialized once per round,
    not once per client. The bytes on the wire are the .proto's either way."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def register(servicer, server) -> None:
    """As the generated ``add_FederationServicer_to_server``, with :func:`_serialize` for responses."""
    handlers = {"Join": grpc.stream_stream_rpc_method_handler(
        servicer.Join, request_deserializer=pb.ClientMessage.FromString, response_serializer=_serialize)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("cohort.v1.Federation", handlers),))
    server.add_registered_method_handlers("cohort.v1.Federation", handlers)


def _refusal(text: str):
    return pb.ServerMessage(bye=pb.Bye(reason=f"refused: {text}"))


class Servicer(rpc.FederationServicer):
    """Every client's Join stream. ``channel`` is the ``GrpcChannel`` (``server.py``) that owns the
    sessions and registers this servicer: it is handed in, never imported, so only the channel
    imports this module."""

    def __init__(self, channel) -> None:
        self.channel = channel

    def Join(self, request_iterator, context):
        ch = self.channel
        key = id(context)
        for older in ch.admission.arrive(key, context):  # the quota is full: the oldest still in its hello goes
            older.cancel()
        try:
            session, refused = self._hello(request_iterator, context)
            if refused is not None:
                ch.log.event("refused", session.client_id if session else None, refused)
                yield _refusal(refused)
                return
            if session.nonce:
                ch.admission.proving(key)
                yield pb.ServerMessage(challenge=pb.Challenge(nonce=session.nonce))
                refused = self._proof(session, request_iterator)
                if refused is not None:
                    ch.log.event("refused", session.client_id, refused)
                    yield _refusal(refused)
                    return
        except (StopIteration, grpc.RpcError, ValueError):
            return  # hung up (or was cut off) during the hello
        finally:
            ch.admission.leave(key)
        if ch.bulk_port:
            session.bulk_token = bulk.new_token()
            with ch._lock:
                ch._bulk_tokens[session.bulk_token] = session
        ch._join(session)
        reader = threading.Thread(target=self._read, args=(session, request_iterator), daemon=True,
                                  name=f"cohort-client-{session.client_id}")
        reader.start()
        context.add_callback(lambda: ch._leave(session, "the connection was lost"))
        yield pb.ServerMessage(welcome=pb.Welcome(algorithm=ch.algorithm, algorithm_settings=json.dumps(ch.algorithm_settings),
                                                  chunk_bytes=ch.chunk_bytes, max_update_bytes=ch.max_update_bytes,
                                                  heartbeat_s=ch.heartbeat_s, bulk_port=ch.bulk_port,
                                                  bulk_token=session.bulk_token, run=ch.run_declaration))
        try:
            while True:
                item = session.outbound.get()
                if item is CLOSE:
                    return
                if isinstance(item, BulkTask):
                    yield item.message  # handed to the transport before the next line runs
                    try:
                        bulk.send(session.bulk_down, item.message.task.task_id, item.total, item.sources)
                    except OSError as e:
                        ch._leave(session, f"its bulk connection failed: {e}")
                        return
                    continue
                yield item
        finally:
            session.done.set()

    def _hello(self, requests, context) -> tuple[Session | None, str | None]:
        """The first message: who the client says it is. With a registry, a challenge is prepared."""
        ch = self.channel
        first = next(requests)
        if first.WhichOneof("kind") != "hello" or first.hello.client_id < 0:
            return None, "the first message must be a Hello with a client id >= 0"
        session = Session(int(first.hello.client_id), first.hello.name[:200], context)
        if len(first.hello.policy) > MAX_POLICY_CHARS:
            return session, (f"the site's policy in its hello is {len(first.hello.policy):,} characters; at most "
                             f"{MAX_POLICY_CHARS:,}")
        session.policy = first.hello.policy
        if ch.num_clients is not None and session.client_id >= ch.num_clients:
            return session, (f"client id {session.client_id} is outside this federation, whose ids go from 0 to "
                             f"{ch.num_clients - 1} (data.num_clients)")
        if ch.registry is None:
            return session, None
        entry = ch.registry.get(session.client_id)
        if entry is None:
            return session, (f"client {session.client_id} is not in the server's registry; its operator adds it with "
                             f"`cohort keys allow --registry {ch.registry.path.name} --id {session.client_id} --public client-{session.client_id}.pub`")
        if entry.revoked is not None:
            return session, f"client {session.client_id}'s key was revoked ({entry.revoked_reason})"
        session.public_key = load_public(entry.public_key, f"the registered key of client {session.client_id}")
        session.nonce = new_nonce()
        return session, None

    def _proof(self, session: Session, requests) -> str | None:
        msg = next(requests)
        if msg.WhichOneof("kind") != "proof":
            return (f"the server requires a signed hello: client {session.client_id} must be started with its key "
                    "(cohort client --key client-ID.key)")
        if not verify(session.public_key, msg.proof.signature, hello_bytes(session.nonce, session.client_id, session.name)):
            return (f"the hello's signature does not match the key registered for client {session.client_id} "
                    "(wrong --key, or the key was replaced)")
        return None

    def _read(self, session: Session, requests) -> None:
        """Assemble results; anything malformed ends this client's session, never the server."""
        ch = self.channel
        header, parts, size = None, [], 0
        try:
            for msg in requests:
                session.last_seen = time.monotonic()
                kind = msg.WhichOneof("kind")
                if kind == "ping":
                    continue
                if kind == "result":
                    header, parts, size = msg.result, [], 0
                    if header.payload_bytes > ch.max_update_bytes:  # declared too big: refused before any byte
                        self._refuse(session, header, f"announced a result of {header.payload_bytes} bytes, over the limit "
                                                      f"of {ch.max_update_bytes} bytes (max_update_bytes)")
                        return
                    if session.public_key is not None and header.seq <= session.seq:
                        self._refuse(session, header, f"sent result number {header.seq} after number {session.seq}: a "
                                                      "replayed or reordered result")
                        return
                    session.seq = header.seq
                    if header.bulk:
                        if session.bulk_up is None:
                            self._refuse(session, header, "sent a result on a bulk connection it never opened")
                            return
                        payload = self._receive_bulk(session, header)
                        if payload is None or not self._finish(session, header, [payload]):
                            return
                        header = None
                elif kind == "chunk" and header is not None:
                    size += len(msg.chunk.data)
                    if size > ch.max_update_bytes:  # refused before it is buffered whole
                        self._refuse(session, header, f"sent a result over the limit of {ch.max_update_bytes} bytes "
                                                      "(max_update_bytes)")
                        return
                    if size > header.payload_bytes:
                        self._refuse(session, header, f"sent a result over the limit of the {header.payload_bytes} bytes it announced")
                        return
                    parts.append(msg.chunk.data)
                    if msg.chunk.last:
                        if not self._finish(session, header, parts):
                            return
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

    def _receive_bulk(self, session: Session, header):
        """The result's payload from the client's bulk socket, or None when it failed (the session ends)."""
        def alive():
            session.last_seen = time.monotonic()

        try:
            return bulk.receive(session.bulk_up, int(header.task_id), int(header.payload_bytes), alive)
        except TransportError as e:
            self._refuse(session, header, str(e))
        except OSError as e:
            self.channel._leave(session, f"its bulk connection failed: {e}")
        return None

    def _finish(self, session: Session, header, parts) -> bool:
        """A whole result arrived: checked, decoded, delivered. False: it was refused (the session ends)."""
        problem = self._check_signature(session, header, parts)
        if problem:
            self._refuse(session, header, problem)
            return False
        self._deliver(session, header, self._decode(session, header, parts))
        return True

    def _check_signature(self, session: Session, header, parts: list[bytes]) -> str | None:
        """With a registry: the result is signed by this connection's key, and the key is not revoked now."""
        ch = self.channel
        if session.public_key is None:
            return None
        entry = ch.registry.get(session.client_id)
        if entry is None or entry.revoked is not None:
            return f"client {session.client_id}'s key was revoked ({entry.revoked_reason if entry else 'removed from the registry'})"
        if not verify(session.public_key, header.signature, result_bytes(session.nonce, header, digest_of(parts))):
            return f"result {header.seq}'s signature does not match client {session.client_id}'s key: refused"
        ch.seen(session.client_id)
        return None

    def _refuse(self, session: Session, header, why: str) -> None:
        """The result fails validation, and the client is turned away."""
        self._deliver(session, header, ClientFailure(session.client_id, FailureStage.VALIDATE, why))
        self.channel._leave(session, why, refuse=True)

    def _decode(self, session: Session, header, parts: list[bytes]):
        try:
            meta = json.loads(header.meta or "{}")
            return outcome_from(meta, decode(parts), session.client_id, int(header.version))
        except (ValueError, TransportError) as e:
            return ClientFailure(session.client_id, FailureStage.VALIDATE, f"malformed result: {e}")

    def _deliver(self, session: Session, header, outcome) -> None:
        task_id = int(header.task_id)
        with self.channel._lock:
            if task_id not in session.pending:
                return  # unknown or late: discarded
            session.pending.discard(task_id)
        self.channel._route(task_id, session.client_id, outcome)
