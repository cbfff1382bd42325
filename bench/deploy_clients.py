"""One `cohort server` and N light clients on loopback: round time and the server's peak memory against N.

The server is a real `cohort server` process running the embedded demo's model (logistic regression
on 30 features) with data.num_clients = N and server.fraction = 1, so every round sends the model to
all N clients and folds N replies. The clients are light: each answers with a zero delta at once, so
the figures are the server's and the wire's, not training's. They run as threads (`serve`, the same
function `cohort client` runs), spread over a few processes so this 2-core machine can hold 200+.

Run: .venv/bin/python bench/deploy_clients.py [--clients 10 50 100 200] [--rounds 5]
Writes bench/results/deploy_clients.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLIENTS = r"""
import sys, threading
import numpy as np
from cohort import EvaluateResult, FitResult
from cohort.channel.grpc.client import serve

class Zero:
    def fit(self, arrays, config):
        return FitResult({k: np.zeros_like(v) for k, v in arrays.items()}, 1)
    def evaluate(self, arrays, config):
        return EvaluateResult(0.0, 1)

address, ids = sys.argv[1], [int(i) for i in sys.argv[2:]]
threads = [threading.Thread(target=serve, args=(address, lambda cid: Zero(), i), kwargs={"retry_for_s": 60, "log": lambda s: None})
           for i in ids]
for t in threads: t.start()
for t in threads: t.join()
"""


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(n: int, rounds: int, out: Path, processes: int = 4) -> dict:
    sets = [f"data.num_clients={n}", f"rounds={rounds}", "server.fraction=1.0", f"name=n{n}", "data.partition=iid",
            "evaluate.federated_fraction=0", "data.holdout_fraction=0", "output.checkpoint=false"]
    server = subprocess.Popen([sys.executable, "-m", "cohort.cli", "server", "--address", "127.0.0.1:0", "--out", str(out),
                               "--no-progress", "--quiet", "--wait-s", "300", *[a for s in sets for a in ("--set", s)]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [server]
    try:
        line = ""
        while "listening on " not in line:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                raise RuntimeError(server.stderr.read())
        address = line.split("listening on ")[1].split(";")[0]
        started = time.monotonic()
        for k in range(processes):
            ids = [str(i) for i in range(k, n, processes)]
            procs.append(subprocess.Popen([sys.executable, "-c", CLIENTS, address, *ids]))
        peak = 0.0
        while server.poll() is None:  # VmHWM is the peak so far: read it until the server exits
            try:
                peak = max(peak, peak_rss_mb(server.pid))
            except OSError:
                break
            time.sleep(0.05)
        wall = time.monotonic() - started
        if server.returncode != 0:
            raise RuntimeError(server.stderr.read())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    (folder,) = out.glob(f"n{n}-*")
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records[1:]]  # round 1 includes the clients' own start-up
    ok = all(r["clients_succeeded"] == n for r in records)
    return {"clients": n, "rounds": len(records), "all_replied": ok, "median_round_s": round(statistics.median(seconds), 4),
            "max_round_s": round(max(seconds), 4), "server_peak_rss_mb": round(peak, 1), "wall_s_incl_start_up": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100, 200])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            row = measure(n, args.rounds, Path(tmp))
            rows.append(row)
            print(f"N={n:4d}  median round {row['median_round_s']:.3f}s  max {row['max_round_s']:.3f}s  "
                  f"server peak RSS {row['server_peak_rss_mb']:.0f} MB  all replied: {row['all_replied']}", flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "what": __doc__.split("\n\n")[0], "machine": "2 cores, loopback",
              "rounds": args.rounds, "rows": rows}
    (ROOT / "bench" / "results" / "deploy_clients.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
