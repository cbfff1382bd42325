"""Real cohort processes for integration tests: a server and its clients, always killed on exit."""

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from cohort.core.arrays import load_safetensors

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def cohort(*args):
    return [sys.executable, "-m", "cohort.cli", *args]


class Federation:
    """A server process and its clients; everything is killed on exit, whatever happened."""

    def __init__(self, out: Path, sets: list[str], server_args=(), *, env=None, cwd=TESTS, command=None) -> None:
        """``command``: what runs ``cohort`` (default: ``python -m cohort.cli``); ``env`` and ``cwd``: of every process."""
        self.out, self.sets, self.procs = out, sets, []
        self.env, self.cwd = env or ENV, cwd
        args = (command or cohort)("server", "--address", "127.0.0.1:0", "--out", str(out), "--no-progress", "--wait-s", "60",
                      *server_args, *[a for s in sets for a in ("--set", s)])
        self.server = self._start(args)
        # the server's lines, read by a thread of their own: a line read ahead into a text buffer would be
        # lost to communicate(), which reads the raw pipe
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.printed: list[str] = []
        self.errors: list[str] = []  # its stderr, drained as it comes (a full pipe would block it)
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=lambda: self.errors.extend(self.server.stderr), daemon=True)]
        for t in self._readers:
            t.start()
        self.address = self._address()

    def _read(self) -> None:
        for line in self.server.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        """The server's stderr so far (all of it once it has exited)."""
        if self.server.poll() is not None:
            for t in self._readers:
                t.join(timeout=30)
        return "".join(self.errors)

    def readline(self, timeout_s: float = 60) -> str:
        """The server's next line ("" once it closed its output)."""
        line = self.lines.get(timeout=timeout_s)
        if line is None:
            self.lines.put(None)
            return ""
        self.printed.append(line)
        return line

    def _start(self, args):
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.cwd)
        self.procs.append(proc)
        return proc

    def _address(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.readline(max(0.1, deadline - time.monotonic()))
            if "listening on " in line:
                self.printed.clear()
                return line.split("listening on ")[1].split(";")[0]
            if not line:
                self.server.wait(timeout=30)
                raise AssertionError(self.stderr())
        raise AssertionError("the server did not report its address")

    def client(self, cid: int, *extra: str):
        args = cohort("client", "--server", self.address, "--id", str(cid), "--retry-s", "20", *extra)
        if not any(e == "--app" for e in extra):
            args += [a for s in self.sets for a in ("--set", s)]
        return self._start(args)

    def wait(self, timeout=120):
        """The server's exit, asserted clean; returns what it printed after its address line."""
        self.server.wait(timeout=timeout)
        err = self.stderr()
        while self.readline(5):
            pass
        assert self.server.returncode == 0, err
        return "".join(self.printed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)


def model_of(out: Path, name: str):
    (folder,) = out.glob(f"{name}-*")
    return load_safetensors(folder / "model.safetensors"), folder


def run_federation(out: Path, sets: list[str], clients: int) -> str:
    """A server and ``clients`` client processes built from the same config; each client must end
    cleanly on the server's goodbye. Returns the server's output."""
    with Federation(out, sets) as fed:
        procs = [fed.client(c) for c in range(clients)]
        printed = fed.wait()
        for c in procs:
            c_out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0 and "done (the run has ended)" in c_out, c_err
    return printed


def free_port() -> int:
    """A port of 127.0.0.1 free now (for a server that a test must restart on the same address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(condition, timeout_s, what):
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def end_all(procs) -> None:
    """Kill the processes of ``procs`` still running (a test's cleanup, whatever happened)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
