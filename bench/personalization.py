"""Benchmark: personalization on label-skewed MNIST (Dirichlet α = 0.1 over the labels, 100 clients,
2NN, C = 0.1, E = 1, B = 10, lr 0.1, each client holding out 20% of its examples).

After the same rounds for every algorithm, every one of the 100 clients is evaluated on its own held-out
examples, and the table gives the mean per-client accuracy (each client counts once; the
example-weighted mean beside it) of:
- the global FedAvg model;
- FedPer (the last layer personal) — the client's base layers plus its own head;
- Ditto (λ as given) — the client's personal model, and Ditto's global model on the same data.
Also the 10th percentile over clients and the share of clients that the personal model serves better than
the global FedAvg model. Prints a markdown table and writes bench/results/personalization.json.
    python bench/personalization.py [--seeds 0 1 2] [--rounds 100] [--lam 0.1 1.0]
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
from cohort.core.types import EvaluateResult, Instruction, Message
from cohort.experiment import build
from cohort.server.loop import run

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def per_client(experiment, state, channel) -> dict[str, np.ndarray]:
    """Every client's held-out accuracy under the final state: the global (main) and the personal one."""
    n = experiment.num_clients
    message = Message("evaluate", state.groups, {"round": state.round, "seed": state.seed, "version": state.version}, state.version)
    out = {"examples": np.zeros(n), "global": np.full(n, np.nan), "personal": np.full(n, np.nan)}
    for pos, result in channel.run(message, [Instruction(c, {}) for c in range(n)]):
        if not isinstance(result, EvaluateResult):  # a client too small to hold anything out
            print(f"  client {pos} not evaluated: {result.reason}")
            continue
        out["examples"][pos] = result.num_examples
        out["global"][pos] = result.metrics["accuracy"]
        out["personal"][pos] = result.metrics.get("personal_accuracy", np.nan)
    return out


def summary(acc: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    ok = ~np.isnan(acc)
    acc, weights = acc[ok], weights[ok]
    return {"mean": round(float(acc.mean()), 4), "weighted_mean": round(float(np.average(acc, weights=weights)), 4),
            "p10": round(float(np.percentile(acc, 10)), 4), "min": round(float(acc.min()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--lam", type=float, nargs="+", default=[0.1, 1.0], help="Ditto's λ values")
    parser.add_argument("--out", default="personalization")
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = [f"data.dir='{DATA}'", f"rounds={args.rounds}", "output.progress=false", "output.checkpoint=false",
              "data.partition='dirichlet'", "data.alpha=0.1", "data.holdout_fraction=0.2", "evaluate.every=1000000",
              "evaluate.centralized=false"]
    variants = [("FedAvg", ["server.algorithm='fedavg'"]),
                ("FedPer (last layer)", ["server.algorithm='fedper'", "fedper.personal_layers=1"]),
                *[(f"Ditto lam={lam:g}", ["server.algorithm='ditto'", f"ditto.lam={lam}"]) for lam in args.lam]]
    runs = []
    for seed in args.seeds:
        fedavg_acc = None
        for name, overrides in variants:
            sets = [*common, f"seed={seed}", *overrides]
            experiment = build(load_config(ROOT / "examples" / "mnist_2nn_shards.toml", sets))
            channel = experiment.channel()
            started = time.perf_counter()
            try:
                state, stopped = run(experiment.initial_state(), algorithm=experiment.algorithm, channel=channel,
                                     num_clients=experiment.num_clients, settings=experiment.settings)
                seconds = time.perf_counter() - started
                scores = per_client(experiment, state, channel)
            finally:
                channel.close()
            own = scores["personal"] if name != "FedAvg" else scores["global"]
            if name == "FedAvg":
                fedavg_acc = own
            row = {"algorithm": name, "seed": seed, "overrides": sets, "rounds": state.round, "stopped_by": stopped,
                   "clients": experiment.num_clients, "seconds": round(seconds, 1),
                   "client_model": summary(own, scores["examples"]),
                   "evaluated_clients": int((~np.isnan(own)).sum()),
                   "better_than_fedavg": round(float(np.nanmean(np.where(np.isnan(own), np.nan, own > fedavg_acc))), 3),
                   "worse_than_fedavg": round(float(np.nanmean(np.where(np.isnan(own), np.nan, own < fedavg_acc))), 3)}
            if name.startswith("Ditto"):
                row["ditto_global_model"] = summary(scores["global"], scores["examples"])
            runs.append(row)
            print(f"{name:20s} seed {seed}: per-client mean {row['client_model']['mean']:.4f} "
                  f"(weighted {row['client_model']['weighted_mean']:.4f}, p10 {row['client_model']['p10']:.4f}), "
                  f"better than FedAvg on {row['better_than_fedavg']:.0%} of clients, {seconds:.0f} s", flush=True)
    print("\n| algorithm | seeds | per-client mean acc | weighted | p10 | better / worse than FedAvg |\n|---|---|---|---|---|---|")
    for name, _ in variants:
        rows = [r for r in runs if r["algorithm"] == name]
        m = [r["client_model"] for r in rows]
        print(f"| {name} | {len(rows)} | {np.mean([x['mean'] for x in m]):.4f} ± {np.std([x['mean'] for x in m]):.4f} | "
              f"{np.mean([x['weighted_mean'] for x in m]):.4f} | {np.mean([x['p10'] for x in m]):.4f} | "
              f"{np.mean([r['better_than_fedavg'] for r in rows]):.0%} / {np.mean([r['worse_than_fedavg'] for r in rows]):.0%} |")
    results = {**provenance(), "config": "examples/mnist_2nn_shards.toml with data.partition = 'dirichlet', alpha = 0.1",
               "setting": "label-skewed MNIST (Dirichlet alpha=0.1), 2NN, 100 clients, C=0.1, E=1, B=10, lr=0.1, "
                          "20% of each client's examples held out; every client evaluated after the last round",
               "metric": "accuracy on each client's own held-out examples; mean over clients (each once), "
                         "example-weighted mean, 10th percentile and minimum over clients",
               "runs": runs}
    write_results(args.out, results)


if __name__ == "__main__":
    main()
