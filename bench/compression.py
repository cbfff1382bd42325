"""Benchmark: accuracy against bytes sent up for each compression of the update, on MNIST's 2NN
(100 IID clients of 600, C = 0.1, E = 1, B = 10, lr 0.1; examples/mnist_2nn_iid.toml), same rounds.

    python bench/compression.py [--rounds 20]
Writes bench/results/compression.json.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from provenance import provenance, write_results

from cohort.config import load_config
from cohort.experiment import run

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
METHODS = {"none": [], "fp16": ["compression.kind='fp16'"], "int8 (stochastic)": ["compression.kind='int8'"],
           "top-k 10% + error feedback": ["compression.kind='topk'", "compression.topk_fraction=0.1"],
           "top-k 5% + error feedback": ["compression.kind='topk'", "compression.topk_fraction=0.05"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    common = [f"data.dir='{DATA}'", f"rounds={args.rounds}", "output.progress=false", "output.checkpoint=false",
              "evaluate.target=0.999"]
    rows = []
    for name, sets in METHODS.items():
        history = run(load_config(ROOT / "examples" / "mnist_2nn_iid.toml", [*common, *sets]), write=False).state.history
        up = sum(h["bytes_received"] for h in history)
        rows.append({"method": name, "final_accuracy": round(history[-1]["accuracy"], 4), "bytes_up": up,
                     "bytes_down": sum(h["bytes_sent"] for h in history)})
        print(rows[-1], flush=True)
    base = rows[0]
    for r in rows:
        r["times_fewer_bytes_up"] = round(base["bytes_up"] / r["bytes_up"], 2)
        r["points_below_uncompressed"] = round(100 * (base["final_accuracy"] - r["final_accuracy"]), 2)
    print("\n| method | final accuracy | bytes up | × fewer | points below none |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['final_accuracy']:.4f} | {r['bytes_up']:,} | {r['times_fewer_bytes_up']} | "
              f"{r['points_below_uncompressed']:+.2f} |")
    write_results("compression", {**provenance(), "config": "examples/mnist_2nn_iid.toml", "rounds": args.rounds,
                                  "setting": "2NN, 100 IID clients, C=0.1, E=1, B=10, lr=0.1; bytes up: the arrays "
                                             "clients sent, summed over the run", "rows": rows})


if __name__ == "__main__":
    main()
