"""Benchmark: Shakespeare by speaking role (a natural non-IID text federation), McMahan's LSTM.

145 speakers with 10 or more speeches are the clients; each predicts the next character of its own
lines (80 characters in, a window every 80), keeping the last fifth of its text to be scored on. FedAvg,
C = 0.1, E = 1, B = 10, lr 1.47 (McMahan et al. 2017), the same rounds for every seed. Reports the
federated (per-speaker held-out, example-weighted) accuracy every 5 rounds and the seconds per round,
and writes bench/results/shakespeare.json.
    python bench/shakespeare.py [--seeds 0] [--rounds 40]
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", default="shakespeare")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        sets = [f"data.dir='{DATA}'", f"rounds={args.rounds}", f"seed={seed}", "evaluate.every=5",
                "output.progress=false", "output.checkpoint=false"]
        result = run(load_config(ROOT / "examples" / "shakespeare_lstm.toml", sets), write=False)
        history = result.state.history
        evaluated = [h for h in history if "federated_accuracy" in h]
        row = {"seed": seed, "overrides": sets, "rounds": result.state.round,
               "federated_accuracy_by_round": {h["round"]: round(h["federated_accuracy"], 4) for h in evaluated},
               "final_federated_accuracy": round(evaluated[-1]["federated_accuracy"], 4),
               "final_federated_loss": round(evaluated[-1]["federated_loss"], 4),
               "seconds_per_round": round(float(np.median([h["seconds"] for h in history if "federated_accuracy" not in h])), 3)}
        runs.append(row)
        print(f"seed {seed}: federated accuracy {row['federated_accuracy_by_round']}, "
              f"{row['seconds_per_round']} s per training round", flush=True)
    write_results(args.out, {**provenance(), "config": "examples/shakespeare_lstm.toml",
                             "setting": "145 speakers (>= 10 speeches), next character from 80, a window every 80, "
                                        "last 20% of each speaker held out; FedAvg C=0.1 E=1 B=10 lr=1.47, 2-layer LSTM 256",
                             "runs": runs})


if __name__ == "__main__":
    main()
