"""Benchmark: robust aggregation against attackers, and central DP's accuracy at a budget, on MNIST
(2NN, 100 IID clients of 600, C = 0.1, E = 1, B = 10, lr 0.1; examples/mnist_2nn_iid.toml).

1. 20% of the clients attack (sign flip, ×10 scaling, label flipping): the final test accuracy after
   --rounds rounds of FedAvg's mean against the coordinate median, the trimmed mean (β = 0.2) and
   Krum (f = 3, so n = 10 >= 2f + 3; and Multi-Krum selecting 5), next to the clean mean.
2. Central DP (clip 1.0): for each ε in --epsilons the noise multiplier that spends exactly that ε
   (δ = 1e-5, RDP) over --rounds rounds at q = 0.1 is found, and the run's final accuracy reported.

    python bench/robust_dp.py [--rounds 20] [--epsilons 1 4 8]
Writes bench/results/robust_dp.json.
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
from cohort.privacy import epsilon
from cohort.privacy.accountant import record

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
ATTACKS = {"sign flip": ["attack.kind='sign_flip'"], "scaling x10": ["attack.kind='scale'", "attack.scale=10.0"],
           "label flipping": ["attack.kind='label_flip'"]}
AGGREGATORS = {"mean": ["server.aggregator='mean'"], "median": ["server.aggregator='median'"],
               "trimmed mean 0.2": ["server.aggregator='trimmed_mean'", "server.trim_fraction=0.2"],
               "Krum f=3": ["server.aggregator='krum'", "server.krum_byzantine=3"],
               "Multi-Krum f=3 m=5": ["server.aggregator='krum'", "server.krum_byzantine=3", "server.krum_select=5"]}


def final_accuracy(sets: list[str]) -> tuple[float, float]:
    history = run(load_config(ROOT / "examples" / "mnist_2nn_iid.toml", sets), write=False).state.history
    return history[-1]["accuracy"], float(np.mean([h["seconds"] for h in history]))


def noise_for(eps: float, rounds: int, q: float = 0.1, delta: float = 1e-5) -> float:
    lo, hi = 0.3, 50.0
    for _ in range(40):  # epsilon falls as z grows: bisect
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if epsilon(record((), q, mid, rounds), delta) <= eps else (mid, hi)
    return hi


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    args = p.parse_args()
    torch.set_num_threads(1)
    common = [f"data.dir='{DATA}'", f"rounds={args.rounds}", "output.progress=false", "output.checkpoint=false",
              "evaluate.target=0.999", "attack.fraction=0.2"]
    clean, sec = final_accuracy(common)
    print(f"clean mean: {clean:.4f} ({sec:.2f} s/round)", flush=True)
    robust = []
    for attack, a_sets in ATTACKS.items():
        for agg, g_sets in AGGREGATORS.items():
            acc, sec = final_accuracy([*common, *a_sets, *g_sets])
            robust.append({"attack": attack, "aggregator": agg, "final_accuracy": round(acc, 4),
                           "points_below_clean": round(100 * (clean - acc), 2), "seconds_per_round": round(sec, 3)})
            print(f"{attack:15s} {agg:20s} {acc:.4f} ({100 * (clean - acc):+.1f} points below clean)", flush=True)
    dp = []
    for eps in args.epsilons:
        z = noise_for(eps, args.rounds)
        sets = [*common, "privacy.mode='central'", f"privacy.noise_multiplier={z}", "privacy.clip=1.0"]
        history = run(load_config(ROOT / "examples" / "mnist_2nn_iid.toml", sets), write=False).state.history
        row = {"epsilon_target": eps, "noise_multiplier": round(z, 4), "epsilon_spent": round(history[-1]["dp_epsilon"], 4),
               "final_accuracy": round(history[-1]["accuracy"], 4), "noise_std_on_mean": history[-1]["dp_noise_std"],
               "clipped_fraction_last_round": history[-1]["dp_clipped_fraction"]}
        dp.append(row)
        print(f"DP ε={eps:g}: z={z:.3f}, spent {row['epsilon_spent']:.3f}, accuracy {row['final_accuracy']:.4f}", flush=True)
    print("\n| attack (20% of clients) | " + " | ".join(AGGREGATORS) + " |\n|---|" + "---|" * len(AGGREGATORS))
    for attack in ATTACKS:
        cells = [f"{r['final_accuracy']:.4f}" for r in robust if r["attack"] == attack]
        print(f"| {attack} | " + " | ".join(cells) + " |")
    print(f"| (clean, mean) | {clean:.4f} |")
    write_results("robust_dp", {**provenance(), "config": "examples/mnist_2nn_iid.toml", "rounds": args.rounds,
                                "setting": "2NN, 100 IID clients, C=0.1, E=1, B=10, lr=0.1; 20% attackers (seeded choice)",
                                "clean_final_accuracy": round(clean, 4), "robust": robust, "central_dp": dp})


if __name__ == "__main__":
    main()
