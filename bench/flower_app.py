"""The vs_flower workload as a Flower 1.41 app (Message API), run by Flower's simulation runtime.

Runs in Flower's own virtual environment (bench/vs_flower.py makes it), so it imports no cohort: it
reads MNIST from the same files, splits it IID among the clients, and builds McMahan's 2NN or CNN as
cohort's model zoo does. E = 1, B = 10, SGD lr 0.1; FedAvg weighted by examples; the global model is
evaluated on the test set after every round (Flower's evaluate_fn). Training and evaluation are written
in cohort's arrangement (see evaluate and train), so that the rounds compare the frameworks, not two
ways to write the user's code. Prints one JSON line: the wall
time at which each round's evaluation ended, and the accuracies.

    python flower_app.py MODEL CLIENTS PER_ROUND ROUNDS DATA_DIR ACTORS
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

if __name__ == "__main__":  # the settings go to the actors through the environment they inherit
    os.environ.update(dict(zip(("VS_MODEL", "VS_CLIENTS", "VS_PER_ROUND", "VS_ROUNDS", "VS_DATA", "VS_ACTORS"), sys.argv[1:7])))
MODEL, DATA = os.environ["VS_MODEL"], os.environ["VS_DATA"]
CLIENTS, PER_ROUND, ROUNDS, ACTORS = (int(os.environ[k]) for k in ("VS_CLIENTS", "VS_PER_ROUND", "VS_ROUNDS", "VS_ACTORS"))
_cache: dict = {}  # per process: each Ray actor reads MNIST once, as a cohort worker does


def idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def data(split: str):
    if split not in _cache:
        prefix = "train" if split == "train" else "t10k"
        x = idx(os.path.join(DATA, "mnist", f"{prefix}-images-idx3-ubyte.gz"))
        y = idx(os.path.join(DATA, "mnist", f"{prefix}-labels-idx1-ubyte.gz"))
        _cache[split] = (torch.from_numpy(x.astype(np.float32)[:, None] / 255.0), torch.from_numpy(y.astype(np.int64)))
    return _cache[split]


def partition(cid: int) -> np.ndarray:
    if "order" not in _cache:
        _cache["order"] = np.random.default_rng(0).permutation(60000)
    per = 60000 // CLIENTS
    return _cache["order"][cid * per:(cid + 1) * per]


def build() -> nn.Module:
    if MODEL == "mnist_2nn":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10))


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cid = int(context.node_config["partition-id"])
    x, y = data("train")
    rows = torch.from_numpy(partition(cid))
    x, y = x[rows], y[rows]
    if "model" not in _cache:
        _cache["model"] = build()
    model = _cache["model"]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    layout = torch.channels_last if MODEL == "mnist_cnn" else torch.contiguous_format  # as cohort's client trains it
    model.to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    round_ = int(msg.content["config"]["server-round"])
    perm = torch.from_numpy(np.random.default_rng((cid, round_)).permutation(len(x)))
    for s in range(0, len(x), 10):
        b = perm[s:s + 10]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[b].contiguous(memory_format=layout)), y[b]).backward()
        opt.step()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": len(x)})})
    return Message(content=content, reply_to=msg)


server = ServerApp()
EVAL_THREADS = 2
marks: list[float] = []
accuracies: list[float] = []


def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    # the arrangement cohort's evaluator uses, so that the rounds compare the frameworks, not two ways to
    # evaluate: both cores (the actors wait meanwhile), and for the CNN channels-last images in batches of 64
    # (for the 2NN: without the pixels no test image uses, padded to 16 columns)
    torch.set_num_threads(EVAL_THREADS)
    model = build()
    state = arrays.to_torch_state_dict()
    tx, ty = data("test")
    b = 1024
    if MODEL == "mnist_cnn":
        model, tx, b = model.to(memory_format=torch.channels_last), tx.contiguous(memory_format=torch.channels_last), 64
    else:
        if "cut" not in _cache:  # once, as cohort's evaluator does it
            used = tx.reshape(len(tx), -1).ne(0).any(0)
            keep = used.nonzero().squeeze(1)
            cols = torch.cat([keep, (~used).nonzero().squeeze(1)[:(-len(keep)) % 16]])
            _cache["cut"] = (cols, tx.reshape(len(tx), -1)[:, cols].contiguous())
        cols, tx = _cache["cut"]
        model[1] = nn.Linear(len(cols), 200)
        state["1.weight"] = state["1.weight"][:, cols]
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(tx[s:s + b]).argmax(1) == ty[s:s + b]).sum()) for s in range(0, len(tx), b))
    accuracies.append(correct / len(tx))
    marks.append(time.perf_counter())
    return MetricRecord({"accuracy": correct / len(tx)})


@server.main()
def main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    strategy = FedAvg(fraction_train=PER_ROUND / CLIENTS, fraction_evaluate=0.0, min_train_nodes=PER_ROUND,
                      min_evaluate_nodes=0, min_available_nodes=CLIENTS)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(build().state_dict()), num_rounds=ROUNDS,
                   train_config=ConfigRecord({}), evaluate_fn=evaluate)


if __name__ == "__main__":
    started = time.perf_counter()
    # the apps from the module by name, so that they pickle by reference: each actor imports this module
    # once and keeps its data cache (run as __main__, they would pickle by value, with fresh globals)
    import flower_app as app

    run_simulation(server_app=app.server, client_app=app.client, num_supernodes=CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": ACTORS, "include_dashboard": False}})
    print(json.dumps({"started": started, "marks": app.marks, "accuracy": app.accuracies, "ended": time.perf_counter()}))
