"""The bulk connections: array payloads on plain (or TLS) sockets beside the gRPC stream.

gRPC carries every message through protobuf and HTTP/2 framing, and grpcio's Python layer copies
each message a few times: on this machine the best any protocol on grpcio reached was 0.41-0.47 of
raw loopback TCP for a 100 MB model (``bench/deploy_throughput.py`` records it), and cohort's chunked
stream 0.11-0.13. So the payloads themselves, when both ends can, go on two sockets per client, one
for each direction, that carry nothing else: the server sends straight from the model's memory
(``socket.sendall`` on each array's memoryview, no copy) and the client receives straight into one
buffer whose arrays are views (one copy, as raw TCP has). Everything else (who the client is, the
task, the result's header and its signature over the payload's SHA-256) stays on the gRPC stream.

Opening one: after the Welcome (which carries ``bulk_port`` and a fresh 32-byte ``bulk_token``) the
client dials ``bulk_port`` on the server's host, over TLS when the stream is, with its client
certificate under mutual TLS, and sends ``MAGIC``, the token and its direction (``D`` for payloads
to the client, ``U`` for results). The server answers ``OK`` once the socket belongs to that
session; anything else (a wrong token, a token used twice, garbage, silence past the handshake
deadline, counted from the connection's arrival whatever trickles in) is closed unanswered. At most
``MAX_HANDSHAKES`` connections are in their handshake at once: a new one beyond closes the oldest
(a real client's takes milliseconds). A client that cannot open them (a firewall) keeps using chunks on
the stream: the Header's ``bulk`` flag says which way each payload comes.

A payload on a bulk socket: 8 bytes of task id, 8 bytes of length (big-endian), then the
safetensors bytes. The receiver knows both from the stream's Header and refuses any mismatch.
"""

from __future__ import annotations

import hmac
import os
import socket
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cohort.core.errors import TransportError

MAGIC = b"cohort/bulk/v1\n"
TOKEN_BYTES = 32
DOWN, UP = b"D", b"U"
OK = b"OK"
PREFIX = 16  # task id, length
MAX_HANDSHAKES = 32  # connections still in their handshake at once; a new one beyond closes the oldest
CONNECT_S = 5.0
PIECE = 4 * 2**20  # bytes per send or recv_into call: progress (heartbeats) is noted this often
STALL_S = 60.0  # a bulk socket on which one piece moves no further for this long is dead


def new_token() -> bytes:
    return os.urandom(TOKEN_BYTES)


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """``ssl`` loads a certificate and key only from files; they are written to a private temporary
    folder (mode 0700) for the call and removed at once."""
    with tempfile.TemporaryDirectory(prefix="cohort-tls-") as folder:
        c, k = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        c.write_bytes(cert)
        k.touch(mode=0o600)
        k.write_bytes(key)
        context.load_cert_chain(c, k)


def server_context(tls: tuple[bytes, bytes], client_ca: bytes | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, *tls)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.decode())
    return context


def client_context(ca: bytes, cert: bytes | None, key: bytes | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca.decode())
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("the bulk connection closed")
        got += k
    return bytes(buf)


class Listener:
    """Accepts bulk connections on ``host:port`` and hands each authenticated one to ``attach(token,
    direction, socket)``, which says whether the token was good."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None,
                 attach: Callable[[bytes, bytes, socket.socket], bool], handshake_s: float) -> None:
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        try:
            self._sock = socket.create_server((host.strip("[]"), port), family=family, backlog=128)
        except OSError as e:
            raise TransportError(f"cannot listen for bulk connections on {host}:{port}: {e} (choose another "
                                 "--bulk-port, or turn them off with --bulk-port -1)") from e
        self.port = self._sock.getsockname()[1]
        self._context, self._attach, self._handshake_s = context, attach, handshake_s
        self._pending: OrderedDict[int, list] = OrderedDict()  # [socket] of those in their handshake, oldest first
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="cohort-bulk-accept")
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            holder = [conn]  # the socket, then its TLS wrapper: what a deadline or an eviction closes
            with self._lock:
                self._pending[id(holder)] = holder
                oldest = list(self._pending)[:-MAX_HANDSHAKES] if len(self._pending) > MAX_HANDSHAKES else []
            for key in oldest:  # a flood of half-open connections: the oldest make room
                self._expire(key)
            threading.Thread(target=self._handshake, args=(holder,), daemon=True, name="cohort-bulk-handshake").start()

    def _expire(self, key: int) -> None:
        with self._lock:
            holder = self._pending.pop(key, None)
        if holder is not None:
            close(holder[0])

    def _handshake(self, holder: list) -> None:
        # the whole handshake has one deadline from the connection's arrival: a peer trickling a byte
        # at a time does not reset it
        key = id(holder)
        timer = threading.Timer(self._handshake_s, self._expire, (key,))
        timer.daemon = True
        timer.start()
        conn = holder[0]
        try:
            conn.settimeout(self._handshake_s)
            if self._context is not None:
                conn = self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                holder[0] = conn
                conn.do_handshake()
            hello = _recv_exact(conn, len(MAGIC) + TOKEN_BYTES + 1)
            magic, token, direction = hello[:len(MAGIC)], hello[len(MAGIC):-1], hello[-1:]
            with self._lock:
                in_time = self._pending.pop(key, None) is not None  # else the deadline or an eviction closed it
            if in_time and hmac.compare_digest(magic, MAGIC) and direction in (DOWN, UP) and self._attach(token, direction, conn):
                conn.settimeout(STALL_S)
                conn.sendall(OK)
                return
        except (OSError, ValueError):  # garbage, a failed TLS handshake, silence: closed unanswered
            pass
        finally:
            timer.cancel()
            with self._lock:
                self._pending.pop(key, None)
        close(conn)

    def close(self) -> None:
        self._closed = True
        close(self._sock)


def connect(host: str, port: int, token: bytes, direction: bytes, context: ssl.SSLContext | None) -> socket.socket:
    """A bulk connection to the server, ready to carry payloads one way; raises OSError when it cannot."""
    name = host.strip("[]")
    sock = socket.create_connection((name, port), timeout=CONNECT_S)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=name)
        sock.sendall(MAGIC + token + direction)
        if _recv_exact(sock, len(OK)) != OK:
            raise ConnectionError("the server refused the bulk connection")
        sock.settimeout(STALL_S)
        return sock
    except BaseException:
        close(sock)
        raise


def close(sock: socket.socket | None) -> None:
    """Ends ``sock`` now, also for a thread blocked reading or writing it."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def send(sock: socket.socket, task_id: int, total: int, sources: Sequence[memoryview]) -> None:
    """One payload: its prefix, then each source as it lies in memory, a piece at a time (the socket's
    timeout bounds each piece, so a peer that stops reading is given up on after ``STALL_S``)."""
    sock.sendall(task_id.to_bytes(8, "big", signed=True) + total.to_bytes(8, "big"))
    for mv in sources:
        for start in range(0, len(mv), PIECE):
            sock.sendall(mv[start:start + PIECE])


def receive(sock: socket.socket, task_id: int, total: int, progress: Callable[[], None] = lambda: None) -> np.ndarray:
    """The payload of task ``task_id`` announced on the stream as ``total`` bytes, in one writable
    buffer. A payload for another task, or of another length, is refused (TransportError)."""
    prefix = _recv_exact(sock, PREFIX)
    got_id, got_total = int.from_bytes(prefix[:8], "big", signed=True), int.from_bytes(prefix[8:], "big")
    if got_id != task_id or got_total != total:
        raise TransportError(f"the bulk connection carried task {got_id}'s {got_total} bytes where the stream "
                             f"announced task {task_id}'s {total} bytes")
    buf = np.empty(total, np.uint8)  # not zeroed: every byte is written by recv_into
    view, got = memoryview(buf), 0
    while got < total:
        k = sock.recv_into(view[got:got + PIECE])
        if not k:
            raise ConnectionError(f"the bulk connection closed after {got} of {total} bytes")
        got += k
        progress()
    return buf
