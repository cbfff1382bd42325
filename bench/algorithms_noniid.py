"""Benchmark: FedAvg, FedProx and SCAFFOLD on pathological non-IID MNIST (McMahan et al. 2017's shards:
2NN, 100 clients with 2 label shards each, C = 0.1, E = 1, B = 10, lr 0.1), same rounds and seeds.

Measures per run: best test accuracy and its round, final accuracy, the first round at >= 85%
(None if never) and the mean seconds per round (training plus centralized evaluation, 1 torch
thread). Prints a markdown table and writes bench/results/algorithms_noniid.json.
    python bench/algorithms_noniid.py [--seeds 0 1] [--rounds 50] [--mu 0.01 0.1]
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
LEVEL = 0.85
STEPS = {"fedasync": 10}  # server steps per round of client updates (C = 0.1 of 100 clients: 10 updates)


def variants(mus: list[float], more: bool = False) -> list[tuple[str, list[str]]]:
    out = [("FedAvg", ["server.algorithm='fedavg'"]),
           *[(f"FedProx mu={mu:g}", ["server.algorithm='fedprox'", f"fedprox.mu={mu}"]) for mu in mus],
           ("SCAFFOLD", ["server.algorithm='scaffold'"])]
    if more:  # the server optimizers (untuned: one setting each, said in the name) and FedBuff
        out += [("FedAdam lr=0.01", ["server.optimizer='adam'", "server.lr=0.01"]),
                ("FedYogi lr=0.01", ["server.optimizer='yogi'", "server.lr=0.01"]),
                ("FedAdagrad lr=0.03", ["server.optimizer='adagrad'", "server.lr=0.03"]),
                ("FedAvgM lr=0.1 m=0.9", ["server.lr=0.1", "server.momentum=0.9"]),
                ("FedBuff K=10 M=20", ["server.policy='fedbuff'", "fedbuff.buffer_size=10", "fedbuff.concurrency=20"]),
                # one update per server step: ten steps are one round's worth of updates (STEPS), evaluated every ten
                ("FedAsync a=0.6 M=20", ["server.policy='fedasync'", "fedasync.alpha=0.6", "fedasync.concurrency=20",
                                         "evaluate.every=10"])]
    return out



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--mu", type=float, nargs="+", default=[0.01, 0.1], help="FedProx proximal strengths")
    parser.add_argument("--more", action="store_true", help="also FedAdam, FedYogi, FedAdagrad, FedAvgM and FedBuff")
    parser.add_argument("--out", default="algorithms_noniid", help="results file name in bench/results/")
    args = parser.parse_args()
    torch.set_num_threads(1)  # evaluation on one thread too, as the clients (simulation.threads = 1)
    warm = torch.nn.Linear(2, 2)  # torch imports its compiler stack (~2 s) at the first optimizer: not in round 1
    torch.optim.SGD(warm.parameters(), lr=0.1)
    common = [f"data.dir='{DATA}'", f"rounds={args.rounds}", "output.progress=false", "output.checkpoint=false"]
    runs = []
    for name, overrides in variants(args.mu, args.more):
        for seed in args.seeds:
            per = next((k for p, k in STEPS.items() if f"server.policy='{p}'" in overrides), 1)
            sets = [*common, f"seed={seed}", *overrides, *([f"rounds={args.rounds * per}"] if per > 1 else [])]
            full = run(load_config(ROOT / "examples" / "mnist_2nn_shards.toml", sets), write=False).state.history
            history = [{**h, "round": h["round"] // per} for h in full
                       if "accuracy" in h and h["round"] % per == 0]  # rounds of 10 client updates
            accs = [h["accuracy"] for h in history]
            best = int(np.argmax(accs))
            row = {"algorithm": name, "seed": seed, "overrides": sets,
                   "best_accuracy": round(accs[best], 4), "best_round": history[best]["round"],
                   "final_accuracy": round(accs[-1], 4), "final_round": history[-1]["round"],
                   "round_to_85": next((h["round"] for h in history if h["accuracy"] >= LEVEL), None),
                   "round_to_95": next((h["round"] for h in history if h["accuracy"] >= 0.95), None),
                   "seconds_per_round": round(float(sum(h["seconds"] for h in full) / len(history)), 4),
                   "accuracy_by_round": [round(a, 4) for a in accs]}
            runs.append(row)
            print(f"{name:18s} seed {seed}: best {row['best_accuracy']:.4f} @ {row['best_round']}, "
                  f"final {row['final_accuracy']:.4f}, 85% at {row['round_to_85']}, 95% at {row['round_to_95']}, "
                  f"{row['seconds_per_round']:.3f} s/round", flush=True)
    print("\n| algorithm | seed | best acc (round) | final acc | rounds to 85% | s/round |\n|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['algorithm']} | {r['seed']} | {r['best_accuracy']:.4f} ({r['best_round']}) | "
              f"{r['final_accuracy']:.4f} | {r['round_to_85']} | {r['seconds_per_round']:.3f} |")
    print("\n| algorithm | seeds | final acc (mean ± sd) | rounds to 85% (each seed) | rounds to 95% (each seed) |\n|---|---|---|---|---|")
    for name in dict.fromkeys(r["algorithm"] for r in runs):
        rows = [r for r in runs if r["algorithm"] == name]
        final = [r["final_accuracy"] for r in rows]
        print(f"| {name} | {len(rows)} | {np.mean(final):.4f} ± {np.std(final):.4f} | "
              f"{', '.join(str(r['round_to_85']) for r in rows)} | {', '.join(str(r['round_to_95']) for r in rows)} |")
    results = {**provenance(), "config": "examples/mnist_2nn_shards.toml",
               "setting": "pathological non-IID MNIST, 2NN, 100 clients x 2 shards, C=0.1, E=1, B=10, lr=0.1",
               "seconds": "mean wall seconds per round (training + centralized evaluation), 1 torch thread",
               "runs": runs}
    write_results(args.out, results)


if __name__ == "__main__":
    main()
