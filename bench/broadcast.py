"""Benchmark: the cost of sending the global model to the process pool, before and after the
shared-memory broadcast (src/cohort/channel/pool.py, channel/shared.py).

Setting: 2NN on IID MNIST, 1,000 clients of which 100 per round (C = 0.1), E = 1, B = 10;
simulation.backend = "processes" with 2 workers of 1 torch thread. "Before" is commit 988404c, where
each client task pickles the global arrays; "after" is this checkout, where a round writes them once
to shared memory and each task carries only a reference.

Measures per round, the first round (pool start-up) excluded: median wall seconds (training and
centralized evaluation) and the bytes the main process pickles into the pool's queues (task
arguments; ``ForkingPickler.dumps`` is wrapped to count them) and unpickles from them (replies).
Each side runs in its own interpreter (same venv python) with PYTHONPATH pointing at its source;
the in-process backend of this checkout runs too, as a reference. Writes bench/results/broadcast.json.
    python bench/broadcast.py [--rounds 11] [--repeats 3] [--before 988404c]
The "before" source is checked out with `git worktree add /tmp/cohort-before <commit>` and removed
afterwards. One side alone, printing JSON: PYTHONPATH=SRC python bench/broadcast.py --measure SRC
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("COHORT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
WORKTREE = Path("/tmp/cohort-before")


def overrides(rounds: int, backend: str = "processes") -> list[str]:
    # keys both versions know (988404c has no output.checkpoint; nothing is written with write=False anyway)
    return [f"data.dir='{DATA}'", "data.num_clients=1000", "server.fraction=0.1", f"rounds={rounds}",
            "client.epochs=1", "client.batch_size=10", f"simulation.backend='{backend}'", "simulation.workers=2",
            "simulation.threads=1", "evaluate.target=1.0", "output.progress=false"]


def measure(src: str, rounds: int, backend: str) -> dict:
    """Run in this interpreter (its ``cohort`` must come from ``src``); per-round seconds and bytes."""
    from multiprocessing.reduction import ForkingPickler

    import cohort
    from cohort.config import load_config
    from cohort.experiment import run

    if not Path(cohort.__file__).resolve().is_relative_to(Path(src).resolve()):
        sys.exit(f"cohort imported from {cohort.__file__}, not from {src}")
    counted = {"pickled": 0, "unpickled": 0}
    dumps, loads = ForkingPickler.dumps.__func__, ForkingPickler.loads

    def counting_dumps(cls, obj, protocol=None):
        data = dumps(cls, obj, protocol)
        counted["pickled"] += len(data)
        return data

    def counting_loads(data, *a, **kw):
        counted["unpickled"] += len(data)
        return loads(data, *a, **kw)

    ForkingPickler.dumps = classmethod(counting_dumps)  # the queues' feeder thread (main process) calls it
    ForkingPickler.loads = staticmethod(counting_loads)  # the result queue's get (pickle.loads)
    marks = []

    class Marks:  # the progress hook both versions call after each round
        def __call__(self, record, state):
            marks.append((record["round"], record["seconds"], counted["pickled"], counted["unpickled"], record["bytes_sent"]))

        def close(self):
            pass

    config = load_config(ROOT / "examples" / "mnist_2nn_iid.toml", overrides(rounds, backend))
    run(config, write=False, progress=Marks())
    per_round = [{"round": r, "seconds": round(s, 4), "pickled": p - p0, "unpickled": u - u0, "channel_bytes_sent": b}
                 for (r, s, p, u, b), (_, _, p0, u0, _) in zip(marks, [(0, 0, 0, 0, 0), *marks])]
    timed = per_round[1:]  # round 1 starts the pool (workers spawned, dataset unpickled): warm-up
    return {"cohort_file": cohort.__file__, "rounds": per_round,
            "median_seconds_per_round": round(float(np.median([r["seconds"] for r in timed])), 4),
            "pickled_bytes_per_round": int(np.median([r["pickled"] for r in timed])),
            "unpickled_bytes_per_round": int(np.median([r["unpickled"] for r in timed])),
            "channel_bytes_sent_per_round": int(np.median([r["channel_bytes_sent"] for r in timed]))}


def run_side(src: Path, rounds: int, backend: str = "processes") -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "COHORT_DATA_DIR": DATA}
    out = subprocess.run([sys.executable, __file__, "--measure", str(src), "--rounds", str(rounds), "--backend", backend],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11, help="rounds per side; the first is warm-up")
    parser.add_argument("--before", default="988404c", help="commit with the pickled broadcast")
    parser.add_argument("--measure", metavar="SRC", help="measure the cohort under SRC here and print JSON")
    parser.add_argument("--backend", default="processes", help="with --measure: simulation.backend")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side; seconds: median of their medians")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.rounds, args.backend)))
        return
    sides = {"before": WORKTREE / "src", "after": ROOT / "src", "after, in-process (reference)": ROOT / "src"}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    git("worktree", "add", "--detach", str(WORKTREE), args.before)
    try:
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every side
            for name, src in sides.items():
                runs[name].append(run_side(src, args.rounds, "inprocess" if "in-process" in name else "processes"))
    finally:
        git("worktree", "remove", "--force", str(WORKTREE))
    summary = {name: {"median_seconds_per_round": round(float(np.median([r["median_seconds_per_round"] for r in rs])), 4),
                      **{k: v for k, v in rs[0].items() if "bytes" in k},  # the same in every repeat
                      "seconds_per_round_by_repeat": [r["median_seconds_per_round"] for r in rs], "repeats": rs}
               for name, rs in runs.items()}
    before, after, inprocess = summary.values()
    print("\n| code | median s/round | pickled to workers / round | unpickled from workers / round | model bytes x tasks / round |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['median_seconds_per_round']:.3f} {s['seconds_per_round_by_repeat']} | {s['pickled_bytes_per_round']:,} | "
              f"{s['unpickled_bytes_per_round']:,} | {s['channel_bytes_sent_per_round']:,} |")
    ratios = {"pickled_bytes": round(before["pickled_bytes_per_round"] / after["pickled_bytes_per_round"], 1),
              "seconds": round(before["median_seconds_per_round"] / after["median_seconds_per_round"], 3)}
    print(f"before/after: pickled bytes x{ratios['pickled_bytes']}, seconds per round x{ratios['seconds']}")
    results = {"date": datetime.date.today().isoformat(), "config": "examples/mnist_2nn_iid.toml",
               "overrides": overrides(args.rounds),
               "setting": "2NN, IID MNIST, 1000 clients, 100 per round, E=1, B=10, 2 worker processes x 1 torch thread",
               "before": {"commit": args.before, **before},
               "after": {"commit": git("rev-parse", "--short", "HEAD"), "src_dirty": bool(git("status", "--porcelain", "src")),
                         **after},
               "after_inprocess_reference": {"overrides": overrides(args.rounds, "inprocess"), **inprocess},
               "ratio_before_over_after": ratios,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "fields": {"pickled_bytes_per_round": "median over rounds 2.. of bytes ForkingPickler.dumps produced in "
                                                     "the main process (task arguments put on the pool's call queue)",
                          "unpickled_bytes_per_round": "same for ForkingPickler.loads (replies from the result queue)",
                          "channel_bytes_sent_per_round": "the channel's own count: model bytes x clients",
                          "median_seconds_per_round": "median over repeats of the median over rounds 2.. (training + "
                                                      "centralized evaluation)"}}
    out = ROOT / "bench" / "results" / "broadcast.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
