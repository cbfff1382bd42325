"""The live view of a federation: ``cohort view RUN_DIR``, ``cohort run --view``, ``cohort server --view``.

A small Starlette app (:mod:`.app`) over the run folder (:mod:`.snapshot`), served by uvicorn; the page
is static files with uPlot (MIT, shipped in ``static/``) for the curves, and no build step.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from cohort.core.errors import ConfigError

__all__ = ["ViewServer"]


class ViewServer:
    """The view of ``folder`` served on ``address`` (HOST:PORT; port 0: any free one) in a thread of this
    process; ``url`` is the address to open (with the token when one is needed)."""

    def __init__(self, folder: str | Path, address: str = "127.0.0.1:8765", token: str | None = None) -> None:
        try:
            import uvicorn

            from cohort.tracking.view.app import check_token, make_app, parse_address
        except ImportError as e:
            raise ConfigError(f"the live view needs {e.name}: pip install 'cohort[view]'") from e
        host, port = parse_address(address)
        self.token = check_token(host, token)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as e:
            self._socket.close()
            raise ConfigError(f"--view-address {address!r}: cannot listen there ({e.strerror}); pick another port "
                              "(0: any free one)") from e
        self.port = self._socket.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")
        config = uvicorn.Config(make_app(folder, self.token, host), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)  # open event streams do not hold the exit up
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> "ViewServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
                                        name="cohort-view")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def serve(self) -> None:
        """Serve in this thread until Ctrl-C."""
        self._server.run(sockets=[self._socket])

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop serving; with ``grace_s``, after that long, so that open pages receive the last state."""
        if grace_s > 0 and self._thread is not None and self._thread.is_alive():
            time.sleep(grace_s)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()
