"""Benchmark: what the live view costs a simulation. The 2NN with 10 of 100 MNIST clients (McMahan's
E = 1, B = 10, one torch thread, test evaluation every round), run in a fresh process without the view
and with ``--view`` and one page's event stream open the whole time (read here, as a browser would),
alternating. Reports the median seconds of the rounds after the first, and their ratio; the target is
under 1.02. Writes bench/results/view_overhead.json.

    python bench/view_overhead.py [--rounds 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from provenance import ROOT, provenance, write_results

DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def once(rounds: int, view: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, "-m", "cohort.cli", "run", str(ROOT / "examples" / "mnist_2nn_iid.toml"), "--out", out,
                "--quiet", "--no-progress", "--set", f"rounds={rounds}", "--set", f"data.dir='{DATA}'",
                "--set", "evaluate.target=1.0", "--set", "output.checkpoint=false", "--set", "simulation.threads=1"]
        if view:
            args += ["--view", "--view-address", "127.0.0.1:0"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        events = [0]
        if view:
            for line in proc.stdout:
                m = re.search(r"live view: (http://\S+)", line)
                if m:
                    def read(url=m.group(1)):
                        try:
                            with urllib.request.urlopen(url + "api/events", timeout=600) as stream:
                                for raw in stream:
                                    events[0] += raw.startswith(b"event: ")
                        except OSError:  # the run ended and took the view with it
                            pass

                    threading.Thread(target=read, daemon=True).start()
                    break
        proc.communicate(timeout=1800)
        assert proc.returncode == 0, proc.stderr
        (folder,) = Path(out).glob("*/metrics.jsonl")
        seconds = [json.loads(line)["seconds"] for line in folder.read_text().splitlines()]
    return {"view": view, "first_round_s": seconds[0], "later_median_s": statistics.median(seconds[1:]),
            "events_received": events[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        for view in (False, True):
            row = once(args.rounds, view)
            runs.append(row)
            print(f"view={view!s:5s}: later rounds {row['later_median_s']:.4f} s (median), events read {row['events_received']}",
                  flush=True)
    plain = statistics.median(r["later_median_s"] for r in runs if not r["view"])
    viewed = statistics.median(r["later_median_s"] for r in runs if r["view"])
    ratio = viewed / plain
    print(f"\nwithout the view {plain:.4f} s a round, with it {viewed:.4f} s: ratio {ratio:.3f} (target < 1.02)")
    write_results("view_overhead", {**provenance(), "setting": "MNIST 2NN, 10 of 100 IID clients, E=1, B=10, one torch thread, "
                                    "test evaluation every round; with --view one event stream is open throughout",
                                    "rounds": args.rounds, "median_later_round_s": {"without": plain, "with_view": viewed},
                                    "ratio": round(ratio, 4), "runs": runs})


if __name__ == "__main__":
    main()
