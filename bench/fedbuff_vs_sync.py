"""Benchmark: synchronous FedAvg against FedBuff (buffered asynchronous) on IID MNIST with slow and
fast clients: 2NN, 100 clients, E = 1, B = 10, lr 0.1, client speeds spread log-uniformly over
[1, 10] on the simulated clock (simulation.speed_spread = 10). Sync samples C = 0.1 (10 clients) per
round, and a round lasts as long as its slowest client; FedBuff steps every K = 10 arrivals with M
clients training at once (M = 20 and 10), stale updates scaled by (1 + s)^-0.5.

Each run evaluates after every round/step and stops at the highest target accuracy (or the round
cap). Measures, to 90% and to 95% test accuracy: simulated time, server steps, wall seconds, bytes
sent and client updates. Prints a markdown table and writes bench/results/fedbuff_vs_sync.json.
    python bench/fedbuff_vs_sync.py [--seeds 0 1 2] [--rounds 300] [--targets 0.9 0.95] [--concurrency 20 10]
    python bench/fedbuff_vs_sync.py --fedasync --seeds 0 --concurrency 20 --out async_vs_sync   (with FedAsync)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from provenance import provenance, write_results

from cohort.config import load_config
from cohort.experiment import run

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def variants(concurrency: list[int], buffer_size: int, fedasync: bool) -> list[tuple[str, list[str]]]:
    out = [("sync C=0.1", ["server.policy='sync'", "server.fraction=0.1"]),
           *[(f"FedBuff K={buffer_size} M={m}", ["server.policy='fedbuff'", f"fedbuff.buffer_size={buffer_size}",
                                                  f"fedbuff.concurrency={m}", "fedbuff.staleness_exponent=0.5"])
             for m in concurrency]]
    if fedasync:  # one arrival per server step: ten times the steps, evaluated every tenth
        out += [(f"FedAsync a=0.6 M={m}", ["server.policy='fedasync'", "fedasync.alpha=0.6", f"fedasync.concurrency={m}",
                                            "fedasync.staleness='polynomial'", "fedasync.staleness_a=0.5",
                                            "evaluate.every=10", "rounds=5000"]) for m in concurrency]
    return out


def to_level(history: list[dict], level: float) -> dict | None:
    """Cost of getting to ``level``: figures summed up to the first step whose accuracy reaches it."""
    hit = next((i for i, r in enumerate(history) if r.get("accuracy", -1.0) >= level), None)
    if hit is None:
        return None
    h = history[: hit + 1]
    return {"steps": h[-1]["round"], "simulated_time": round(h[-1]["simulated_time"], 3),
            "wall_seconds": round(sum(r["seconds"] for r in h), 2), "bytes_sent": int(sum(r["bytes_sent"] for r in h)),
            "client_updates": int(sum(r["clients_succeeded"] for r in h)),
            "staleness_mean": round(float(np.mean([r.get("staleness_mean", 0.0) for r in h])), 3)}



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=300, help="round (server step) cap")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95],
                        help="accuracy levels reported; a run stops at the highest (evaluate.target)")
    parser.add_argument("--buffer-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[20, 10])
    parser.add_argument("--fedasync", action="store_true", help="also FedAsync (Xie et al. 2019)")
    parser.add_argument("--out", default="fedbuff_vs_sync", help="results file name in bench/results/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm = torch.nn.Linear(2, 2)  # torch imports its compiler stack (~2 s) at the first optimizer: not in the timing
    torch.optim.SGD(warm.parameters(), lr=0.1)
    common = [f"data.dir='{DATA}'", f"rounds={args.rounds}", "simulation.speed_spread=10", "evaluate.every=1",
              "evaluate.target_metric='accuracy'", f"evaluate.target={max(args.targets)}",
              "output.progress=false", "output.checkpoint=false"]
    runs = []
    for name, overrides in variants(args.concurrency, args.buffer_size, args.fedasync):
        for seed in args.seeds:
            sets = [*common, f"seed={seed}", *overrides]
            started = time.perf_counter()
            result = run(load_config(ROOT / "examples" / "mnist_2nn_iid.toml", sets), write=False)
            h = result.state.history
            row = {"variant": name, "seed": seed, "overrides": sets, "stopped_by": result.stopped_by,
                   "run_wall_seconds": round(time.perf_counter() - started, 2),  # with building the experiment
                   "to": {f"{t:g}": to_level(h, t) for t in args.targets},
                   "accuracy_by_step": [round(r["accuracy"], 4) for r in h if "accuracy" in r],
                   "simulated_time_by_step": [round(r["simulated_time"], 3) for r in h]}
            runs.append(row)
            print(f"{name:18s} seed {seed}: " + "; ".join(
                f"{t}: None" if c is None else f"{t}: {c['steps']} steps, simulated {c['simulated_time']:.2f} s, "
                f"wall {c['wall_seconds']:.1f} s, {c['bytes_sent'] / 1e6:.1f} MB" for t, c in row["to"].items()), flush=True)
    print("\n| policy | seed | target | simulated time | server steps | wall s | MB sent | client updates | mean staleness |"
          "\n|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        for t, c in r["to"].items():
            print(f"| {r['variant']} | {r['seed']} | {t} | " + ("not reached | | | | | |" if c is None else
                  f"{c['simulated_time']:.2f} | {c['steps']} | {c['wall_seconds']:.1f} | {c['bytes_sent'] / 1e6:.1f} | "
                  f"{c['client_updates']} | {c['staleness_mean']:.2f} |"))
    results = {**provenance(), "config": "examples/mnist_2nn_iid.toml",
               "setting": "IID MNIST, 2NN, 100 clients, E=1, B=10, lr=0.1, speed_spread=10 (a client task takes "
                          "10**-u simulated s, u ~ U[0,1) per client)",
               "targets": args.targets, "round_cap": args.rounds,
               "fields": {"to": "per accuracy level, figures up to the first step reaching it (None: never)",
                          "simulated_time": "virtual clock at that step", "steps": "server steps (rounds)",
                          "wall_seconds": "sum of the steps' wall seconds (training + evaluation)",
                          "bytes_sent": "model bytes sent to clients (channel count: model size x tasks computed)",
                          "client_updates": "updates folded into the model"},
               "runs": runs}
    write_results(args.out, results)


if __name__ == "__main__":
    main()
