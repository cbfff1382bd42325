"""Local differential privacy: the client clips and noises its own update before it leaves.

With ``[client] ldp = true`` the PyTorch client clips its model delta to L2 norm ``ldp_clip`` and
adds Gaussian noise of standard deviation ``ldp_noise_multiplier · ldp_clip`` to every coordinate.
Nobody downstream, the server included, can take the noise out: it comes from the operating
system's entropy, not from the run's seed, so local DP runs are not bit-reproducible (on purpose).

Each noised update is a Gaussian mechanism on the client's whole dataset. Two datasets can give
clipped deltas up to ``2 · ldp_clip`` apart, so its noise multiplier for that sensitivity is
``ldp_noise_multiplier / 2``. There is no amplification by sampling, since the client knows when it
takes part. The client counts its noised updates in its own state and reports its cumulative
``ldp_epsilon`` at ``ldp_delta`` (RDP, from ``dp-accounting``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cohort.core.arrays import NamedArrays, clip_to

GROUP = "ldp"
RAW = ("ldp_noise_multiplier", "ldp_delta")


def privatize(delta: NamedArrays, clip: float, noise_multiplier: float, delta_dp: float) -> tuple[NamedArrays, dict]:
    clipped, _ = clip_to(delta, clip)
    g = np.random.default_rng()  # OS entropy: the server cannot regenerate it
    std = noise_multiplier * clip
    noised = {k: (a + g.normal(0.0, std, a.shape)).astype(a.dtype) if a.dtype.kind == "f" else a for k, a in clipped.items()}
    return noised, {"ldp_noise_multiplier": float(noise_multiplier), "ldp_delta": float(delta_dp)}


def account(reply, state):
    """Count this noised update in the client's state and report its cumulative (ε, δ)."""
    from cohort.privacy.accountant import epsilon

    metrics, facts = dict(reply.metrics), dict(reply.facts)
    z, delta = (facts.pop(k) for k in RAW)
    own = dict(state or {})
    count = int(own.get(GROUP, {}).get("updates", np.zeros(1, np.int64))[0]) + 1
    metrics["ldp_epsilon"] = epsilon(((1.0, z / 2, count),), delta, "rdp")
    metrics["ldp_delta"] = delta
    own[GROUP] = {"updates": np.array([count], np.int64)}
    return replace(reply, metrics=metrics, facts=facts), own
