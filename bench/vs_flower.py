"""Benchmark: the same workload in Flower 1.41's simulation and in cohort, runs alternating.

McMahan's setting: MNIST split IID among 100 clients (600 examples each), 10 per round, E = 1,
B = 10, SGD lr 0.1, FedAvg weighted by examples, the global model evaluated on the 10,000 test images
after every round. Both sides use the machine the same way: two workers of one torch thread each
(Flower: two Ray actors, its default arrangement for 2 CPUs; cohort: the process pool with 2 workers),
and both evaluate on two threads in the same arrangement (for the CNN, channels-last batches of 64: what
cohort's evaluator does, written into the Flower app too). Beside them: cohort's in-process loop (the
2NN on one thread, the CNN on two) and, for the 2NN, the vectorized backend on two threads.

Flower runs from its own virtual environment (bench/.flower-venv, made on first use with
flwr[simulation]==1.41.0 and the same torch), through bench/flower_app.py. Reported per run: the first
round, the median of the later rounds, the whole run's wall time from process start to exit, the test
accuracy after the last round, and the peak proportional set size (PSS) of the whole process tree
(Ray's raylet, GCS and workers included), sampled every 0.2 s.

    python bench/vs_flower.py [--rounds-2nn 10] [--rounds-cnn 3] [--repeats 2] [--models mnist_2nn mnist_cnn] [--out NAME]

Writes bench/results/NAME.json and NAME.md (NAME: --out, vs_flower by default; the README's figures are from
`--models mnist_2nn --rounds-2nn 20 --repeats 5 --out vs_flower_2nn` and `--models mnist_cnn --repeats 3 --out
vs_flower_cnn`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from provenance import ROOT, provenance, write_results

DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
VENV = ROOT / "bench" / ".flower-venv"
FLOWER = "flwr[simulation]==1.41.0"  # 1.42 needs a certifi release the registry here lacks

COHORT = r"""
import json, sys, time
started = time.perf_counter()
from cohort.config import load_config
from cohort.experiment import run
model, clients, per_round, rounds, data, backend, threads = sys.argv[1:8]
sets = [f"model.name='{model}'", "data.dataset='mnist'", f"data.num_clients={clients}", "data.partition='iid'",
        f"server.fraction={int(per_round) / int(clients)}", f"rounds={rounds}", f"data.dir='{data}'", "data.download=false",
        "client.epochs=1", "client.batch_size=10", "client.lr=0.1", "output.progress=false", "output.checkpoint=false",
        "data.holdout_fraction=0", "evaluate.federated_fraction=0",  # as Flower's side: all 600 examples train, no client evaluates
        f"simulation.threads={threads}", f"simulation.backend='{backend}'", "simulation.workers=2"]
history = run(load_config(None, sets), write=False).state.history
print(json.dumps({"seconds": [h["seconds"] for h in history], "accuracy": [h["accuracy"] for h in history],
                  "started": started, "ended": time.perf_counter()}))
"""


def flower_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"making {VENV} with {FLOWER} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), FLOWER, "torch==2.13.0"],
                       check=True)
    return python


def measured(args: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[dict, float, float]:
    """Run ``args``; its last stdout line (JSON), its wall seconds, and its process tree's peak PSS in MB."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    peak, done = [0], threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                break
            peak[0] = max(peak[0], total)
            done.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), wall, peak[0] / 2**20


def flower(model: str, rounds: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"), "RAY_DEDUP_LOGS": "0"}
    got, wall, pss = measured([str(flower_python()), str(ROOT / "bench" / "flower_app.py"), model, "100", "10", str(rounds),
                               DATA, "2"], env=env, cwd=ROOT / "bench")
    marks = got["marks"]  # marks[0]: the evaluation of the initial model, before round 1
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    return {"side": "flower (2 Ray actors)", "first_round_s": seconds[0], "later_median_s": statistics.median(seconds[1:]),
            "seconds": seconds, "wall_s": wall, "accuracy": got["accuracy"][-1], "peak_pss_mb": pss}


SIDES = {"processes": "cohort (2 worker processes)", "inprocess": "cohort (in-process, {t} thread{s})",
         "vectorized": "cohort (vectorized, {t} thread{s})"}


def cohort(model: str, rounds: int, backend: str, threads: int = 1) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    got, wall, pss = measured([sys.executable, "-c", COHORT, model, "100", "10", str(rounds), DATA, backend, str(threads)],
                              env=env)
    seconds = got["seconds"]
    name = SIDES[backend].format(t=threads, s="s" if threads > 1 else "")
    return {"side": name, "first_round_s": seconds[0], "later_median_s": statistics.median(seconds[1:]),
            "seconds": seconds, "wall_s": wall, "accuracy": got["accuracy"][-1], "peak_pss_mb": pss}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds-2nn", type=int, default=10)
    parser.add_argument("--rounds-cnn", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["mnist_2nn", "mnist_cnn"], choices=["mnist_2nn", "mnist_cnn"])
    parser.add_argument("--out", default="vs_flower")
    args = parser.parse_args()
    flower_python()
    runs = []
    for model, rounds in (("mnist_2nn", args.rounds_2nn), ("mnist_cnn", args.rounds_cnn)):
        if model not in args.models:
            continue
        for repeat in range(args.repeats):  # alternating: F C C F C C ...
            for make in (lambda: flower(model, rounds), lambda: cohort(model, rounds, "processes"),
                         lambda: cohort(model, rounds, "inprocess", 1 if model == "mnist_2nn" else 2),
                         *([lambda: cohort(model, rounds, "vectorized", 2)] if model == "mnist_2nn" else [])):
                row = {"model": model, "rounds": rounds, "repeat": repeat, **make()}
                runs.append(row)
                print(f"{model} {row['side']:30s} first {row['first_round_s']:.2f} s, later {row['later_median_s']:.3f} s, "
                      f"wall {row['wall_s']:.1f} s, accuracy {row['accuracy']:.4f}, peak PSS {row['peak_pss_mb']:.0f} MB",
                      flush=True)
    lines = ["| model (rounds) | side | first round | later rounds (median) | whole run | accuracy | peak PSS |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for model in args.models:
        for side in dict.fromkeys(r["side"] for r in runs):
            rows = [r for r in runs if r["model"] == model and r["side"] == side]
            if not rows:  # a side run for one model only
                continue
            cell = {k: statistics.median(r[k] for r in rows) for k in ("first_round_s", "later_median_s", "wall_s", "accuracy",
                                                                       "peak_pss_mb")}
            summary.setdefault(model, {})[side] = cell
            lines.append(f"| {model} ({rows[0]['rounds']}) | {side} | {cell['first_round_s']:.2f} s | {cell['later_median_s']:.3f} s"
                         f" | {cell['wall_s']:.1f} s | {cell['accuracy']:.4f} | {cell['peak_pss_mb']:.0f} MB |")
    ratios = {}
    for model, cells in summary.items():
        f = cells["flower (2 Ray actors)"]
        for side, c in cells.items():
            if side.startswith("cohort"):
                ratios[f"{model}: flower / {side}, later rounds"] = round(f["later_median_s"] / c["later_median_s"], 2)
                ratios[f"{model}: {side} / flower, whole run"] = round(c["wall_s"] / f["wall_s"], 2)
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in ratios.items()) + "\n"
    print("\n" + text)
    write_results(args.out, {**provenance(), "flower": FLOWER, "setting": "MNIST IID, 100 clients, 10 per round, E=1, "
                                "B=10, SGD lr 0.1, test evaluation every round, 2 workers of 1 torch thread",
                                "summary": summary, "ratios": ratios, "runs": runs})
    (ROOT / "bench" / "results" / f"{args.out}.md").write_text("# cohort against Flower 1.41 (`bench/vs_flower.py`)\n\n" + text)


if __name__ == "__main__":
    main()
