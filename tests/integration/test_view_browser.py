"""The live view in a real browser: headless Chromium (Debian's package) driven over the DevTools
protocol against `cohort run --view` while the run goes on. It waits until the round counter and the
accuracy curve show the last round, checks the client table against clients.jsonl, and takes a
screenshot (COHORT_UPDATE_SCREENSHOT=1 also writes it to docs/view.png)."""

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 6


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the browser test needs Chromium: apt-get install chromium (.ci/run installs it)"
    return found


class Page:
    """One tab of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                      f"--user-data-dir={profile}", "--window-size=1400,1300", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=2**26, open_timeout=10))
        self.ids = iter(range(1, 10**9))

    def call(self, method: str, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == i:
                assert "error" not in msg, msg
                return msg["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self._stack.close()
        self.proc.kill()
        self.proc.wait(timeout=30)


PROBE = """JSON.stringify({
  round: document.getElementById('round').dataset.round,
  points: document.getElementById('chart-quality').dataset.points,
  state: document.getElementById('state').textContent,
  rows: [...document.querySelectorAll('#clients tbody tr')].map(r => [+r.dataset.client, +r.dataset.rounds])})"""


def test_the_page_follows_a_live_run_to_its_last_round(tmp_path):
    # slow enough to watch (many local epochs), short enough for a test: 10 hospitals, 8 of them a round
    run = subprocess.Popen([sys.executable, "-m", "cohort.cli", "run", "--out", str(tmp_path), "--no-progress", "--quiet",
                            "--set", f"rounds={ROUNDS}", "--set", "client.epochs=300", "--set", "server.fraction=0.8",
                            "--set", "name=watched", "--view", "--view-address", "127.0.0.1:0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    page = None
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            line = run.stdout.readline()
            assert line or run.poll() is None, run.stderr.read()
            assert time.monotonic() < deadline, "the run printed no view address"
            m = re.search(r"live view: (http://\S+)", line)
            url = m.group(1) if m else None
        page = Page(tmp_path / "profile")
        page.call("Page.enable")
        page.call("Page.navigate", url=url)
        seen_running, state = False, {}
        deadline = time.monotonic() + 120
        while True:
            raw = page.evaluate(PROBE)
            state = json.loads(raw) if raw else {}
            seen_running |= state.get("state") == "running"
            if state.get("round") == str(ROUNDS) and state.get("points") == str(ROUNDS):
                break
            assert time.monotonic() < deadline, f"the page never showed round {ROUNDS}: {state}"
            time.sleep(0.2)
        assert seen_running  # it was watched live, not after the fact
        time.sleep(0.5)  # the curves' last points drawn
        shot = base64.b64decode(page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
        (tmp_path / "view.png").write_bytes(shot)
        if os.environ.get("COHORT_UPDATE_SCREENSHOT"):
            (ROOT / "docs" / "view.png").write_bytes(shot)
        # the client table: every client, with the rounds clients.jsonl says it trained in
        run.communicate(timeout=120)
        assert run.returncode == 0
        (folder,) = tmp_path.glob("watched-*")
        rows = [json.loads(line) for line in (folder / "clients.jsonl").read_text().splitlines()]
        expected = {}
        for r in rows:
            if r["task"] == "fit" and r["status"] == "ok":
                expected[r["client"]] = expected.get(r["client"], 0) + 1
        shown = dict(map(tuple, state["rows"]))
        assert sorted(shown) == list(range(10))
        assert {c: n for c, n in shown.items() if n} == expected
    finally:
        if page is not None:
            page.close()
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=30)
