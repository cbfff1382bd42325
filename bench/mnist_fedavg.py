"""Benchmark: McMahan et al. 2017's 2NN on MNIST, IID and pathological non-IID, with cohort and with a
bare PyTorch FedAvg loop doing the same training (same partition, same cohorts, same batches).

Prints accuracy and seconds per round for both and writes bench/results/mnist_fedavg.json.
    python bench/mnist_fedavg.py [--seeds 0 1 2] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cohort.config import load_config
from cohort.core.seeding import Stage, rng, torch_seed
from cohort.experiment import build, run
from cohort.server.sampling import cohort_size, sample_cohort

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def bare_pytorch_fedavg(exp, rounds: int) -> tuple[list[float], float]:
    """FedAvg written directly in PyTorch: the yardstick for accuracy and for cohort's overhead.
    Returns the accuracy after each round and the median seconds per round."""
    cfg, seed = exp.config, exp.config.seed
    x_all = torch.from_numpy(exp.train.x.copy()).float().mul_(exp.train.x_scale)
    y_all = torch.from_numpy(exp.train.y.copy()).long()
    x_test = torch.from_numpy(exp.test.x.copy()).float().mul_(exp.test.x_scale)
    y_test = torch.from_numpy(exp.test.y.copy()).long()
    with torch.random.fork_rng():
        torch.manual_seed(torch_seed(seed, 0, Stage.INIT))
        model = exp.model_fn()
    global_sd = {k: v.clone() for k, v in model.state_dict().items()}
    accuracies, seconds = [], []
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        cohort = sample_cohort(exp.num_clients, cohort_size(exp.num_clients, cfg.server.fraction), seed, r)
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_sd.items()}
        weight = 0
        for cid in cohort:
            idx = torch.from_numpy(exp.partition[int(cid)].copy())
            x, y = x_all[idx], y_all[idx]
            model.load_state_dict(global_sd)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.client.lr)
            order = rng(seed, r, Stage.SHUFFLE, int(cid))
            model.train()
            for _ in range(cfg.client.epochs):
                perm = torch.from_numpy(order.permutation(len(x)))
                xs, ys = x[perm], y[perm]
                for s in range(0, len(x), cfg.client.batch_size):
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(xs[s : s + cfg.client.batch_size]), ys[s : s + cfg.client.batch_size]).backward()
                    opt.step()
            for k, v in model.state_dict().items():
                total[k] += len(x) * v
            weight += len(x)
        global_sd = {k: (v / weight).to(global_sd[k].dtype) for k, v in total.items()}
        model.load_state_dict(global_sd)
        model.eval()
        with torch.no_grad():
            accuracies.append(float((model(x_test).argmax(1) == y_test).float().mean()))
        seconds.append(time.perf_counter() - started)
    return accuracies, float(np.median(seconds))


def cohort_fedavg(config) -> tuple[list[float], float, object]:
    exp = build(config)
    result = run(config, write=False, experiment=exp)
    history = result.state.history
    return [h["accuracy"] for h in history], float(np.median([h["seconds"] for h in history])), exp


def first_round_at(accs: list[float], level: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accs) if a >= level), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)  # both sides on one thread, as cohort's simulation.threads = 1
    # torch imports its compiler stack (~2 s) at the first optimizer: pay it before timing anything
    warm = nn.Linear(2, 2)
    torch.optim.SGD(warm.parameters(), lr=0.1)
    warm(torch.zeros(1, 2)).sum().backward()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
               "setting": "2NN, 100 clients, C=0.1, E=1, B=10, lr=0.1", "rounds": args.rounds,
               "seconds": "median seconds per round, training and centralized evaluation, 1 torch thread", "runs": []}
    for example in ("mnist_2nn_iid.toml", "mnist_2nn_shards.toml"):
        for seed in args.seeds:
            config = load_config(ROOT / "examples" / example,
                                 [f'data.dir="{DATA}"', f"rounds={args.rounds}", f"seed={seed}", "evaluate.target=1.0"])
            accs, sec, exp = cohort_fedavg(config)
            bare_accs, bare_sec = bare_pytorch_fedavg(exp, args.rounds)
            row = {
                "scenario": config.name, "seed": seed,
                "cohort": {"accuracy_round_10": accs[9], "best": max(accs), "round_to_91": first_round_at(accs, 0.91),
                           "round_to_95": first_round_at(accs, 0.95), "seconds_per_round": round(sec, 4),
                           "accuracy_by_round": [round(a, 4) for a in accs]},
                "bare_pytorch": {"accuracy_round_10": bare_accs[9], "best": max(bare_accs),
                                 "round_to_91": first_round_at(bare_accs, 0.91), "round_to_95": first_round_at(bare_accs, 0.95),
                                 "seconds_per_round": round(bare_sec, 4)},
                "time_ratio": round(sec / bare_sec, 3),
            }
            results["runs"].append(row)
            c, b = row["cohort"], row["bare_pytorch"]
            print(f"{config.name:18s} seed {seed}: cohort acc@10 {c['accuracy_round_10']:.4f} best {c['best']:.4f} "
                  f"({c['seconds_per_round']:.3f}s/round) | bare torch acc@10 {b['accuracy_round_10']:.4f} "
                  f"best {b['best']:.4f} ({b['seconds_per_round']:.3f}s/round) | time ratio {row['time_ratio']:.3f}",
                  flush=True)
    out = ROOT / "bench" / "results" / "mnist_fedavg.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
