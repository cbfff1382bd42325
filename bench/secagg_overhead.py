"""Benchmark: the round-time overhead of secure aggregation against plain (unweighted) FedAvg, on
MNIST's 2NN (199,210 parameters; 100 IID clients of 600, E = 1, B = 10, lr 0.1), with 10 and with
100 clients per round, in one process (1 torch thread). SecAgg masks against every other client
(O(n²) PRG work); SecAgg+ against --degree neighbours.

    python bench/secagg_overhead.py [--rounds 3] [--degree 10]
Writes bench/results/secagg_overhead.json.
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


def seconds_per_round(sets: list[str]) -> tuple[float, float]:
    history = run(load_config(ROOT / "examples" / "mnist_2nn_iid.toml", sets), write=False).state.history
    later = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]  # round 1 also warms torch up
    return float(np.mean(later)), history[-1]["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--degree", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for per_round in (10, 100):
        common = [f"data.dir='{DATA}'", f"rounds={args.rounds}", "output.progress=false", "output.checkpoint=false",
                  "evaluate.target=0.999", f"server.fraction={per_round / 100}", "server.weighted=false"]
        plain, acc_plain = seconds_per_round(common)
        row = {"clients_per_round": per_round, "plain_seconds": round(plain, 3), "plain_accuracy": round(acc_plain, 4)}
        for name, sets in (("secagg", ["secagg.mode='secagg'"]),
                           (f"secagg+ k={args.degree}", ["secagg.mode='secagg+'", f"secagg.degree={args.degree}"])):
            s, acc = seconds_per_round([*common, *sets])
            row[f"{name} seconds"] = round(s, 3)
            row[f"{name} overhead"] = round(s / plain, 2)
            row[f"{name} accuracy"] = round(acc, 4)
        rows.append(row)
        print(row, flush=True)
    print("\n| clients per round | plain FedAvg s/round | SecAgg s/round (×) | SecAgg+ s/round (×) |\n|---|---|---|---|")
    for r in rows:
        k = f"secagg+ k={args.degree}"
        print(f"| {r['clients_per_round']} | {r['plain_seconds']:.3f} | {r['secagg seconds']:.3f} ({r['secagg overhead']}×) | "
              f"{r[k + ' seconds']:.3f} ({r[k + ' overhead']}×) |")
    write_results("secagg_overhead", {**provenance(), "config": "examples/mnist_2nn_iid.toml", "rounds": args.rounds,
                                      "setting": "2NN (199,210 parameters), IID, E=1, B=10, lr=0.1, unweighted mean, "
                                                 "1 process, 1 torch thread; seconds: mean of rounds 2.. (incl. evaluation)",
                                      "rows": rows})


if __name__ == "__main__":
    main()
