"""The live view's web app (Starlette, served by uvicorn): a page, its static files, the run's state as
JSON, and server-sent events when it changes.

Read-only by construction: every route is a GET, and nothing in the app reaches the run except its
folder's files. It binds to loopback unless told otherwise; on any other address every request needs
the token (``?token=`` or ``Authorization: Bearer``), compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cohort.core.errors import ConfigError
from cohort.tracking.view.snapshot import RunReader

STATIC = Path(__file__).resolve().parent / "static"
POLL_S = 0.5  # how often the server looks at the folder for each open page (the pages never poll)
KEEPALIVE_S = 15.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--view-address is {address!r}; expected HOST:PORT, e.g. 127.0.0.1:8765 (port 0: any free one)")
    return host.strip("[]"), int(port)


def check_token(host: str, token: str | None) -> str | None:
    """The token the view requires: none on loopback unless given; on any other address the given one,
    or a fresh random one."""
    if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
        raise ConfigError("--view-token must be at least 16 printable characters without spaces (or leave it out: "
                          "a random one is made for a non-local address)")
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24)
    return token


class _TokenGate:
    """Refuses every request without the token (pure ASGI, so server-sent events stream through)."""

    def __init__(self, app, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        # the page's own scripts and styles are public (the same in every cohort); the run's state is not
        if scope["type"] != "http" or self.token is None or scope.get("path", "").startswith("/static/"):
            return await self.app(scope, receive, send)
        given = None
        for key, value in scope.get("headers", []):
            if key == b"authorization" and value.startswith(b"Bearer "):
                given = value[7:].decode("latin-1")
        if given is None:
            from urllib.parse import parse_qs

            given = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [None])[0]
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            response = Response("this view needs its token: open the address printed when it started "
                                "(...?token=...)\n", status_code=401, media_type="text/plain")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def make_app(folder: str | Path, token: str | None = None, host: str = "127.0.0.1") -> Starlette:
    """The view of the run folder ``folder`` served on ``host``. Without a token (loopback), only requests
    addressed to a loopback name are answered, so that a web page elsewhere cannot reach the view
    through a DNS name it points at 127.0.0.1 (DNS rebinding)."""
    reader = RunReader(folder)
    lock = asyncio.Lock()
    cache: dict = {}  # the snapshot and its JSON, rebuilt only when the folder changed

    async def current() -> tuple[dict, str]:
        async with lock:
            # also every few seconds: a killed run's process ends without touching a file
            if reader.changed() or not cache or time.monotonic() - cache["at"] > 5.0:
                await asyncio.to_thread(reader.refresh)
                snap = reader.snapshot()
                body = json.dumps(snap, allow_nan=False, default=str)
                if body != cache.get("body"):
                    cache.update(snap=snap, body=body)
                cache["at"] = time.monotonic()
            return cache["snap"], cache["body"]

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def state(request):
        return Response((await current())[1], media_type="application/json", headers={"Cache-Control": "no-store"})

    async def events(request):
        async def stream():
            sent, quiet = None, 0.0
            while True:
                if await request.is_disconnected():
                    return
                _, body = await current()
                if body is not sent:
                    sent, quiet = body, 0.0
                    yield f"event: state\ndata: {body}\n\n"
                elif quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_S)
                quiet += POLL_S

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [Route("/", index), Route("/api/state", state), Route("/api/events", events),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    middleware = [Middleware(_TokenGate, token=token)]
    if token is None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        allowed = sorted({"127.0.0.1", "localhost", "[::1]", "::1", host if is_loopback(host) else "127.0.0.1"})
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed))
    return Starlette(routes=routes, middleware=middleware)
