"""Benchmark: the server's streaming weighted sum (the FedAvg combine, Σ weight·delta in float64, folded
in as updates arrive) in GB/s of client deltas, beside NumPy's memory bandwidth on the same arrays.

The baseline is the least memory traffic a fold can have: ``sums += delta`` (float64 += float32, one
NumPy call per array, no weight). Both fold the same N client deltas of a model of the given size; the
figure is delta bytes folded per second. Target: the weighted sum at least 50% of the baseline.
    python bench/aggregation_throughput.py [--mb 100] [--clients 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from provenance import provenance, write_results

from cohort.aggregation.weighting import weighted_sum
from cohort.core.types import ClientUpdate


def model(mb: float, gen: np.random.Generator) -> dict[str, np.ndarray]:
    """A model of about ``mb`` MB of float32, in arrays of a 2NN-like spread of sizes."""
    n = int(mb * 2**20 / 4)
    sizes = [n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8]
    return {f"layer{i}": gen.standard_normal(s, dtype=np.float32) for i, s in enumerate(sizes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gen = np.random.default_rng(0)
    deltas = [model(args.mb, gen) for _ in range(args.clients)]
    nbytes = sum(a.nbytes for d in deltas for a in d.values())
    combine = weighted_sum()
    ours, base = [], []
    for _ in range(args.repeats):
        acc = combine.init(deltas[0])
        t = time.perf_counter()
        for i, d in enumerate(deltas):
            acc = combine.add(acc, ClientUpdate(i, d, 600.0, 600))
        ours.append(time.perf_counter() - t)
        sums = {k: np.zeros(a.shape, np.float64) for k, a in deltas[0].items()}
        t = time.perf_counter()
        for d in deltas:
            for k, s in sums.items():
                s += d[k]
        base.append(time.perf_counter() - t)
    gbs = nbytes / min(ours) / 1e9
    base_gbs = nbytes / min(base) / 1e9
    print(f"{args.clients} deltas of {args.mb:g} MB: weighted sum {gbs:.2f} GB/s, NumPy baseline {base_gbs:.2f} GB/s, "
          f"ratio {gbs / base_gbs:.2f}")
    write_results("aggregation_throughput", {**provenance(), "model_mb": args.mb, "clients": args.clients,
                                             "repeats": args.repeats, "weighted_sum_gb_s": round(gbs, 3),
                                             "numpy_baseline_gb_s": round(base_gbs, 3), "ratio": round(gbs / base_gbs, 3),
                                             "seconds": {"weighted_sum": [round(x, 4) for x in ours],
                                                         "baseline": [round(x, 4) for x in base]}})


if __name__ == "__main__":
    main()
