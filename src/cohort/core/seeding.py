"""Every random stream in cohort derives from (run seed, round, stage, client).

No global RNG is read or written by cohort's own code: the same seed and config give the same run in
any backend and after a resume, because each stream can be rebuilt from its four coordinates.
"""

from __future__ import annotations

import enum

import numpy as np


class Stage(enum.IntEnum):
    """The independent random streams of a run. Append only: reordering changes every run."""

    INIT = 0  # initial global model
    PARTITION = 1  # splitting data among clients
    SAMPLE = 2  # choosing the cohort of a round
    SHUFFLE = 3  # a client's mini-batch order
    TORCH = 4  # a client's torch ops (dropout)
    HOLDOUT = 5  # a client's train / held-out split
    EVAL_SAMPLE = 6  # choosing the clients of a federated evaluation
    SPLIT = 7  # server test split of a dataset
    SPEED = 8  # a client's compute speed on the simulated (virtual) clock
    ASYNC_SAMPLE = 9  # choosing the next client an asynchronous policy starts
    DP_NOISE = 10  # central DP: the Gaussian noise on a round's sum
    DP_CLIP = 11  # central DP, adaptive clipping: the noise on the count of unclipped updates
    ATTACK = 12  # attack simulation: which clients attack, and their noise
    SECAGG_GRAPH = 13  # SecAgg+: the order of the clients on the cycle of its sparse graph
    SECAGG_ROUND = 14  # secure aggregation: a client's stochastic rounding into the ring
    COMPRESS = 15  # compression: a client's stochastic rounding to 8 bits
    NETWORK = 16  # network cost model: a client's latency and bandwidth


def seed_sequence(seed: int, round: int, stage: Stage, client: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(round), int(stage), int(client)])


def rng(seed: int, round: int, stage: Stage, client: int = 0) -> np.random.Generator:
    """A numpy Generator for one stream."""
    return np.random.default_rng(seed_sequence(seed, round, stage, client))


def torch_seed(seed: int, round: int, stage: Stage, client: int = 0) -> int:
    """A 63-bit integer seed for torch.Generator / torch.manual_seed for one stream."""
    return int(seed_sequence(seed, round, stage, client).generate_state(1, np.uint64)[0] >> np.uint64(1))
