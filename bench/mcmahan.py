"""Benchmark: McMahan et al. 2017 (Communication-Efficient Learning of Deep Networks from Decentralized
Data), Tables 1 and 2 on MNIST: rounds until the global model first reaches the target test accuracy,
with 100 clients and C = 0.1, each cell at several learning rates (the paper tunes each over a
multiplicative grid; here a grid spaced 10^(1/3), the paper's resolution, around 0.1), reported at the best.

The cells (the paper's rounds in brackets):
  2NN to 97%, E = 1, B = 10:   IID [87], non-IID (2 shards of 300 per client) [664]
  2NN to 97%, E = 1, B = ∞:    IID [1,474], non-IID [1,796]    (--cells 2nn_binf_iid 2nn_binf_noniid, their own
                               grid --binf-lrs; --backend vectorized runs them in minutes)
  CNN to 99%, E = 5, B = 10:   IID [20]
  CNN to 99%, FedSGD (E = 1, B = ∞): IID [626]    (--cells cnn_fedsgd_iid, long)
Rounds to target are read off the best-so-far curve (the first round at or above the target); a run
stops there, or at its cap ("not reached").

    python bench/mcmahan.py [--cells 2nn_iid 2nn_noniid cnn_iid] [--lrs 0.0464 0.1 0.215] [--threads 1]
                            [--backend inprocess|vectorized|processes]

Writes bench/results/mcmahan.json after every run (a long benchmark keeps what it measured) and
bench/results/mcmahan.md, the table of the paper's rounds beside cohort's.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from provenance import ROOT, provenance, write_results

from cohort.config import load_config
from cohort.experiment import run

DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))

CELLS = {  # name: (paper's rounds, target, cap, overrides)
    "2nn_iid": (87, 0.97, 400, ["model.name='mnist_2nn'", "data.partition='iid'", "client.epochs=1", "client.batch_size=10"]),
    "2nn_noniid": (664, 0.97, 2000, ["model.name='mnist_2nn'", "data.partition='shards'", "data.shards_per_client=2",
                                     "client.epochs=1", "client.batch_size=10"]),
    "2nn_binf_iid": (1474, 0.97, 3000, ["model.name='mnist_2nn'", "data.partition='iid'", "client.epochs=1", "client.batch_size=0"]),
    "2nn_binf_noniid": (1796, 0.97, 4000, ["model.name='mnist_2nn'", "data.partition='shards'", "data.shards_per_client=2",
                                           "client.epochs=1", "client.batch_size=0"]),
    "cnn_iid": (20, 0.99, 120, ["model.name='mnist_cnn'", "data.partition='iid'", "client.epochs=5", "client.batch_size=10"]),
    "cnn_fedsgd_iid": (626, 0.99, 1500, ["model.name='mnist_cnn'", "data.partition='iid'", "server.algorithm='fedsgd'"]),
}
LABELS = {"2nn_iid": "2NN, E = 1, B = 10, IID (Table 1)", "2nn_noniid": "2NN, E = 1, B = 10, non-IID (Table 1)",
          "2nn_binf_iid": "2NN, E = 1, B = ∞, IID (Table 1)", "2nn_binf_noniid": "2NN, E = 1, B = ∞, non-IID (Table 1)",
          "cnn_iid": "CNN, FedAvg E = 5, B = 10, IID (Table 2)", "cnn_fedsgd_iid": "CNN, FedSGD, IID (Table 2)"}


def one(cell: str, lr: float, seed: int, threads: int, backend: str = "inprocess", cap: int | None = None,
        verbose: bool = False) -> dict:
    paper, target, default_cap, overrides = CELLS[cell]
    cap = cap or default_cap
    # every client trains on all its examples and the global model is scored on the test set only (the
    # defaults under load_config(None) are the demo's: a fifth held out per client, evaluated every round)
    sets = [f"data.dir='{DATA}'", "data.dataset='mnist'", "data.num_clients=100", "server.fraction=0.1",
            f"seed={seed}", f"rounds={cap}", f"client.lr={lr}" if "fedsgd" not in cell else f"server.lr={lr}",
            f"evaluate.target={target}", "evaluate.target_metric='accuracy'", "output.progress=false",
            "output.checkpoint=false", "data.holdout_fraction=0", "evaluate.federated_fraction=0",  # the paper's setting:
            f"simulation.threads={threads}", f"simulation.backend='{backend}'", *overrides]
    started = time.perf_counter()
    progress = None
    if verbose:  # a line a round, for the long cells
        from cohort.tracking.progress import ConsoleProgress

        progress = ConsoleProgress(cap, bar=False)
    result = run(load_config(None, sets), write=False, progress=progress)
    seconds = time.perf_counter() - started
    history = [h for h in result.state.history if "accuracy" in h]
    best, reached = 0.0, None
    for h in history:
        best = max(best, h["accuracy"])
        if reached is None and best >= target:
            reached = h["round"]
    return {"cell": cell, "lr": lr, "seed": seed, "target": target, "cap": cap, "paper_rounds": paper,
            "rounds_to_target": reached, "rounds_run": history[-1]["round"], "best_accuracy": round(best, 4),
            "seconds": round(seconds, 1), "seconds_per_round": round(seconds / max(1, len(history)), 3),
            "accuracy_by_round": [round(h["accuracy"], 4) for h in history], "overrides": sets}


def table(runs: list[dict]) -> str:
    lines = ["| cell | target | paper's rounds | cohort's rounds (best lr) | at each lr |", "|---|---|---|---|---|"]
    for cell in dict.fromkeys(r["cell"] for r in runs):
        rows = [r for r in runs if r["cell"] == cell]
        done = [r for r in rows if r["rounds_to_target"] is not None]
        best = min(done, key=lambda r: r["rounds_to_target"]) if done else None
        each = ", ".join(f"{r['lr']:g}: " + (str(r["rounds_to_target"]) if r["rounds_to_target"] is not None
                                               else f"not in {r['cap']} (best {r['best_accuracy']:.4f})") for r in rows)
        got = f"{best['rounds_to_target']} (lr {best['lr']:g})" if best else "not reached"
        lines.append(f"| {LABELS[cell]} | {rows[0]['target']:.0%} | {rows[0]['paper_rounds']} | {got} | {each} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", nargs="+", default=["2nn_iid", "2nn_noniid", "cnn_iid"], choices=list(CELLS))
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.0464, 0.1, 0.215])
    parser.add_argument("--cnn-lrs", type=float, nargs="+", default=[0.1], help="learning rates of the CNN cells (costly)")
    parser.add_argument("--binf-lrs", type=float, nargs="+", default=[0.215, 0.464, 1.0],
                        help="learning rates of the B = ∞ cells (one full-batch step a round moves less)")
    parser.add_argument("--backend", default="inprocess", choices=["inprocess", "vectorized", "processes"])
    parser.add_argument("--cap", type=int, default=None, help="rounds at most (default: each cell's own)")
    parser.add_argument("--verbose", action="store_true", help="print every round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="mcmahan")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    runs: list[dict] = []
    for cell in args.cells:
        for lr in (args.cnn_lrs if cell.startswith("cnn") else args.binf_lrs if "binf" in cell else args.lrs):
            row = one(cell, lr, args.seed, args.threads, args.backend, args.cap, args.verbose)
            runs.append(row)
            print(f"{cell:15s} lr {lr:<7g}: {row['rounds_to_target']} rounds to {row['target']:.0%} (paper "
                  f"{row['paper_rounds']}), best {row['best_accuracy']:.4f} in {row['rounds_run']} rounds, "
                  f"{row['seconds_per_round']:.2f} s/round", flush=True)
            write_results(args.out, {**provenance(), "setting": "MNIST, 100 clients, C = 0.1, SGD; rounds to the target "
                                     "test accuracy read off the best-so-far curve; one seed", "runs": runs})
    text = table(runs)
    print("\n" + text)
    (ROOT / "bench" / "results" / f"{args.out}.md").write_text(
        "# McMahan et al. 2017 against cohort (`bench/mcmahan.py`)\n\n" + text)


if __name__ == "__main__":
    main()
