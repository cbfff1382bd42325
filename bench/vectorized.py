"""Benchmark: vectorized clients (every client of a round trained at once: dense stacks with written-out
batched products, other models through torch.func's vmap) against the sequential in-process backend, on
MNIST, per round with test-set evaluation included; and the 2NN's round against the one-process bare
PyTorch loop of bench/overhead.py.

Workloads: logistic regression and McMahan's 2NN, with 10, 100 and 1,000 clients per round (C = 0.1 of
100, 1,000 and 10,000 IID clients: 600, 60 and 6 examples each), E = 1, B = 10, SGD lr 0.1, on 1 and on 2
torch threads, each in a fresh process. Reports the median seconds of rounds 2..R, the speedup and the final
accuracy of both (they must agree). The target: a 2NN round of 10 of 100 at least 3x faster than the bare loop (one process,
one thread: its fastest arrangement, see bench/overhead.py). Writes bench/results/vectorized.json.
    python bench/vectorized.py [--rounds 5] [--threads 1,2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import overhead
from provenance import provenance, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))

# each measurement in a fresh process: in one long process the sequential rows on two threads ran up to
# twice as slowly after the others as alone
ONE = r"""
import json, sys
import torch
from cohort.config import load_config
from cohort.experiment import run
config, data, rounds, model, per_round, backend, threads = sys.argv[1:8]
torch.set_num_threads(int(threads))
sets = [f"data.dir='{data}'", f"rounds={rounds}", f"model.name='{model}'", f"data.num_clients={int(per_round) * 10}",
        "server.fraction=0.1", f"simulation.backend='{backend}'", f"simulation.threads={threads}", "output.progress=false",
        "output.checkpoint=false"]
h = run(load_config(config, sets), write=False).state.history
print(json.dumps({"seconds": [r["seconds"] for r in h], "accuracy": h[-1]["accuracy"]}))
"""


def once(*args) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE, str(ROOT / "examples" / "mnist_2nn_iid.toml"), DATA, *map(str, args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the median of all their rounds")
    args = parser.parse_args()
    rows = []
    bare = [overhead.once("bare", ["mnist_2nn", "100", "10", str(args.rounds), DATA]) for _ in range(2)]
    bare_s = float(np.median([s for r in bare for s in r["seconds"][1:]]))
    print(f"bare PyTorch loop, 2NN 10 of 100, one process, one thread: {bare_s:.3f} s a round", flush=True)
    for threads in (int(t) for t in args.threads.split(",")):
        for model in ("logistic_regression", "mnist_2nn"):
            for per_round in (10, 100, 1000):
                row = {"model": model, "clients_per_round": per_round, "num_clients": per_round * 10, "threads": threads}
                runs = {"inprocess": [], "vectorized": []}
                for _ in range(args.repeats):  # alternating: bursts of load on a shared host hit both sides
                    for backend in runs:
                        runs[backend].append(once(args.rounds, model, per_round, backend, threads))
                for backend, got in runs.items():
                    row[backend] = {"seconds_per_round": round(float(np.median([s for g in got for s in g["seconds"][1:]])), 4),
                                    "accuracy": got[-1]["accuracy"]}
                row["speedup"] = round(row["inprocess"]["seconds_per_round"] / row["vectorized"]["seconds_per_round"], 2)
                if model == "mnist_2nn" and per_round == 10:
                    row["vs_bare_loop"] = round(bare_s / row["vectorized"]["seconds_per_round"], 2)
                rows.append(row)
                print(f"{threads} thread(s) {model:20s} {per_round:5d} per round: sequential "
                      f"{row['inprocess']['seconds_per_round']:.3f} s, vectorized {row['vectorized']['seconds_per_round']:.3f} s "
                      f"({row['speedup']:.2f}x{'; ' + str(row['vs_bare_loop']) + 'x the bare loop' if 'vs_bare_loop' in row else ''})"
                      f"; accuracy {row['inprocess']['accuracy']:.4f} / {row['vectorized']['accuracy']:.4f}", flush=True)
    write_results("vectorized", {**provenance(), "rounds": args.rounds, "repeats": args.repeats,
                                 "setting": "MNIST IID, E=1, B=10, SGD lr 0.1, C=0.1; seconds per round include test evaluation",
                                 "bare_loop_2nn_10_of_100_s": round(bare_s, 4), "rows": rows})


if __name__ == "__main__":
    main()
