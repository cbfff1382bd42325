"""Benchmark: peak memory against the number of registered clients, 1,000 of them per round.

LEAF's Synthetic(1, 1), generated lazily from (seed, client id): 10,000, 100,000 and 1,000,000 clients
registered, 1,000 sampled per round (and about 1,000 scored on their held-out data), 3 rounds of
logistic regression; then SCAFFOLD at a million with its per-client control variates spilling to disk
past 1 MB of memory. Each run is its own process; the figure is its peak resident memory (ru_maxrss).
Target: flat in the number registered. Writes bench/results/million.json.
    python bench/million.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from provenance import provenance, write_results

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
from cohort.config import load_config
from cohort.experiment import run
t = time.perf_counter()
r = run(load_config(sys.argv[1], sys.argv[2:]), write=False)
h = r.state.history
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": time.perf_counter() - t,
                  "seconds_per_round": sorted(x["seconds"] for x in h)[len(h) // 2], "rounds": r.state.round,
                  "federated_accuracy": h[-1].get("federated_accuracy"), "clients_per_round": h[-1]["clients_succeeded"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = str(ROOT / "examples" / "synthetic_million.toml")
    rows = []
    cases = [(n, "fedavg", []) for n in (10_000, 100_000, 1_000_000)]
    cases.append((1_000_000, "scaffold", ["server.algorithm='scaffold'", "simulation.client_state_mb=1"]))
    for n, algorithm, extra in cases:
        sets = [f"rounds={args.rounds}", f"data.num_clients={n}", f"server.fraction={1000 / n}",
                "output.progress=false", "output.checkpoint=false", *extra]
        out = subprocess.run([sys.executable, "-c", CHILD, config, *sets], capture_output=True, text=True, check=True)
        row = {"registered": n, "algorithm": algorithm, "overrides": sets, **json.loads(out.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(f"{n:>9,d} registered, {algorithm:8s}: peak {row['peak_rss_mb']:.0f} MB, {row['seconds_per_round']:.2f} s/round, "
              f"{row['clients_per_round']} clients per round", flush=True)
    write_results("million", {**provenance(), "setting": "Synthetic(1,1) generated lazily, logistic regression 60->10, "
                                                         "1,000 clients per round, E=1, B=10", "rows": rows})


if __name__ == "__main__":
    main()
