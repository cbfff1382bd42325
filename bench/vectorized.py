"""Benchmark: vectorized clients (torch.func: every client of a round trained at once) against the
sequential in-process backend, on MNIST, per round with test-set evaluation included.

Workloads: logistic regression and McMahan's 2NN, with 10, 100 and 1,000 clients per round (C = 0.1 of
100, 1,000 and 10,000 IID clients: 600, 60 and 6 examples each), E = 1, B = 10, SGD lr 0.1, one torch
thread each. Reports the median seconds of rounds 2..R, the speedup and the final accuracy of both (they
must agree), and writes bench/results/vectorized.json.
    python bench/vectorized.py [--rounds 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from provenance import provenance, write_results

from cohort.config import load_config
from cohort.experiment import run

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model in ("logistic_regression", "mnist_2nn"):
        for per_round in (10, 100, 1000):
            row = {"model": model, "clients_per_round": per_round, "num_clients": per_round * 10}
            for backend in ("inprocess", "vectorized"):
                sets = [f"data.dir='{DATA}'", f"rounds={args.rounds}", f"model.name='{model}'", f"data.num_clients={per_round * 10}",
                        "server.fraction=0.1", f"simulation.backend='{backend}'", f"simulation.threads={args.threads}",
                        "output.progress=false", "output.checkpoint=false"]
                h = run(load_config(ROOT / "examples" / "mnist_2nn_iid.toml", sets), write=False).state.history
                row[backend] = {"seconds_per_round": round(float(np.median([r["seconds"] for r in h[1:]])), 4),
                                "accuracy": h[-1]["accuracy"]}
            row["speedup"] = round(row["inprocess"]["seconds_per_round"] / row["vectorized"]["seconds_per_round"], 2)
            rows.append(row)
            print(f"{model:20s} {per_round:5d} per round: sequential {row['inprocess']['seconds_per_round']:.3f} s, "
                  f"vectorized {row['vectorized']['seconds_per_round']:.3f} s ({row['speedup']:.2f}x); accuracy "
                  f"{row['inprocess']['accuracy']:.4f} / {row['vectorized']['accuracy']:.4f}", flush=True)
    write_results("vectorized", {**provenance(), "threads": args.threads, "rounds": args.rounds,
                                 "setting": "MNIST IID, E=1, B=10, SGD lr 0.1, C=0.1; seconds per round include test evaluation",
                                 "rows": rows})


if __name__ == "__main__":
    main()
