"""Benchmark: cohort's round loop against the same rounds written as a bare PyTorch loop.

Both run in a fresh process on one torch thread: McMahan's setting (E = 1, B = 10, SGD lr 0.1, the
global model the example-weighted mean of the clients' models) with test-set evaluation every round.
Workloads: the 2NN with 10 of 100 IID clients (600 examples each) and with 100 of 1,000 (60 each), and
McMahan's CNN with 10 of 100. The bare loop is written plainly here: load_state_dict, a fresh SGD per
client, its batches, a running weighted sum of state_dicts, then evaluation in cohort's arrangement
(batches of 1,024 without the test set's blank pixels; for the CNN channels-last batches of 64, and it
trains in channels-last too, as cohort's client does). Runs alternate in pairs (bare, cohort), so a
pair shares the host's load of that moment. Reports the first round and the median of the later
rounds, and the ratios (cohort / bare) as the median over pairs of each pair's ratio: one slow spell on
a shared host moves one pair, not the figure. The target is <= 1.10 from the first round on.
Writes bench/results/overhead.json.
    python bench/overhead.py [--rounds 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from provenance import provenance, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))

BARE = r"""
import json, sys, time
import numpy as np, torch, torch.nn.functional as F
torch.set_num_threads(1)
from cohort.data import iid, load_mnist
from cohort.models import model_factory
name, clients, per_round, rounds, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
train, test = load_mnist(data, download=False)
X = torch.from_numpy(train.x.astype(np.float32) / 255.0); Y = torch.from_numpy(train.y.astype(np.int64))
TX = torch.from_numpy(test.x.astype(np.float32) / 255.0); TY = torch.from_numpy(test.y.astype(np.int64))
part = iid(len(train), clients, 0)
torch.manual_seed(0)
model = model_factory(name, (1, 28, 28), 10)()
glob = {k: v.clone() for k, v in model.state_dict().items()}
# evaluation as cohort's evaluator does it: for the CNN, channels-last images in batches of 64 on a model of its own;
# for the 2NN, only the pixels some test image uses (the blank border left out, padded to 16 columns)
EB = 64 if name == "mnist_cnn" else 1024
evm = model_factory(name, (1, 28, 28), 10)()
cols = None
if name == "mnist_cnn":
    evm, TX = evm.to(memory_format=torch.channels_last), TX.contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)  # and trains in channels-last, as cohort's client does
else:
    from cohort.client.torch_dense import used_columns
    cols = torch.from_numpy(used_columns(test.x.reshape(len(test.x), -1)))
    TX, evm[1] = TX.reshape(len(TX), -1)[:, cols].contiguous(), torch.nn.Linear(len(cols), evm[1].out_features)
LAYOUT = torch.channels_last if name == "mnist_cnn" else torch.contiguous_format
gen = np.random.default_rng(0)
seconds = []
for r in range(rounds):
    t = time.perf_counter()
    acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in glob.items()}
    total = 0
    for c in gen.choice(clients, per_round, replace=False):
        idx = torch.from_numpy(np.asarray(part[int(c)]))
        x, y = X[idx], Y[idx]
        model.load_state_dict(glob)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        perm = torch.from_numpy(gen.permutation(len(x)))
        xs, ys = x[perm].contiguous(memory_format=LAYOUT), y[perm]
        for s in range(0, len(x), 10):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[s:s + 10]), ys[s:s + 10]).backward()
            opt.step()
        for k, v in model.state_dict().items():
            acc[k] += len(x) * v.double()
        total += len(x)
    glob = {k: (v / total).to(glob[k].dtype) for k, v in acc.items()}
    evm.load_state_dict(glob if cols is None else {**glob, "1.weight": glob["1.weight"][:, cols]})
    evm.eval()
    with torch.no_grad():
        correct = sum(int((evm(TX[s:s + EB]).argmax(1) == TY[s:s + EB]).sum()) for s in range(0, len(TX), EB))
    seconds.append(time.perf_counter() - t)
print(json.dumps({"seconds": seconds, "accuracy": correct / len(TX)}))
"""

COHORT = r"""
import json, sys
from cohort.config import load_config
from cohort.experiment import run
name, clients, per_round, rounds, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sets = [f"model.name='{name}'", f"data.num_clients={clients}", f"server.fraction={per_round / clients}", f"rounds={rounds}",
        f"data.dir='{data}'", "data.download=false", "output.progress=false", "output.checkpoint=false",
        "simulation.threads=1", "evaluate.target=1.0"]
h = run(load_config(sys.argv[6], sets), write=False).state.history
print(json.dumps({"seconds": [r["seconds"] for r in h], "accuracy": h[-1]["accuracy"]}))
"""


def once(kind: str, args: list[str]) -> dict:
    code = BARE if kind == "bare" else COHORT
    extra = [str(ROOT / "examples" / "mnist_2nn_iid.toml")] if kind == "cohort" else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args, *extra], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, clients, per_round in (("mnist_2nn", 100, 10), ("mnist_2nn", 1000, 100), ("mnist_cnn", 100, 10)):
        a = [name, str(clients), str(per_round), str(args.rounds), DATA]
        runs = {"bare": [], "cohort": []}
        for _ in range(args.repeats):
            for kind in ("bare", "cohort"):
                runs[kind].append(once(kind, a))
        first = {k: [r["seconds"][0] for r in v] for k, v in runs.items()}
        later = {k: [float(np.median(r["seconds"][1:])) for r in v] for k, v in runs.items()}
        pair_first = [c / b for b, c in zip(first["bare"], first["cohort"])]
        pair_later = [c / b for b, c in zip(later["bare"], later["cohort"])]
        row = {"model": name, "clients": clients, "per_round": per_round,
               "first_round_s": {k: round(float(np.median(v)), 3) for k, v in first.items()},
               "later_rounds_median_s": {k: round(float(np.median(v)), 4) for k, v in later.items()},
               "ratio_first": round(float(np.median(pair_first)), 3), "ratio_later": round(float(np.median(pair_later)), 3),
               "pair_ratios_first": [round(x, 3) for x in pair_first], "pair_ratios_later": [round(x, 3) for x in pair_later],
               "accuracy": {k: v[-1]["accuracy"] for k, v in runs.items()}}
        first = {k: float(np.median(v)) for k, v in first.items()}
        later = {k: float(np.median(v)) for k, v in later.items()}
        rows.append(row)
        print(f"{name} {per_round} of {clients}: first round bare {first['bare']:.2f} s, cohort {first['cohort']:.2f} s "
              f"({row['ratio_first']:.2f}); later rounds bare {later['bare']:.3f} s, cohort {later['cohort']:.3f} s "
              f"({row['ratio_later']:.2f})", flush=True)
    write_results("overhead", {**provenance(), "rounds": args.rounds, "repeats": args.repeats,
                               "setting": "MNIST IID, E=1, B=10, SGD lr 0.1, one torch thread, fresh process per run, "
                                          "test evaluation every round", "rows": rows})


if __name__ == "__main__":
    main()
