"""What a config adds to an algorithm, to the round loop and to the data before a run: the algorithm
with its settings, the loop's settings and round policy (``loop_settings``),
robust aggregation (``server.aggregator``, ``server.norm_bound``), central DP (``[privacy]``), secure
aggregation (``[secagg]``), the checks of client-side privacy (``[client] ldp``, ``dp_sgd``), and the
label flipping of simulated attackers (``[attack]``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cohort.algorithms import ALGORITHMS, Algorithm
from cohort.config import RunConfig
from cohort.core.errors import ConfigError
from cohort.data import ArrayDataset, Partition
from cohort.server.kinds import POLICIES
from cohort.server.loop import LoopSettings, Target
from cohort.server.policies import FedBuff


def algorithm_settings(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of ``server.algorithm``'s factory: the server's settings and its own section's."""
    s = config.server
    own = config.chosen("server.algorithm")  # its own section, e.g. [fedprox] mu
    extra = dataclasses.asdict(own) if own is not None else {}
    return {"server_lr": s.lr, "server_momentum": s.momentum, "weighted": s.weighted, **extra}


def make_algorithm(config: RunConfig) -> Algorithm:
    """The algorithm ``server.algorithm`` names, with its settings."""
    algorithm = ALGORITHMS[config.server.algorithm](**algorithm_settings(config))
    s = config.server
    fixed = s.norm_bound if s.norm_bound != "auto" else 0
    if s.aggregator != "mean" or fixed:
        from cohort.aggregation.robust import norm_bound

        algorithm = algorithm.with_model_pipeline(s.combine(), (norm_bound(fixed),) if fixed else ())
    if s.optimizer != "sgd":  # FedAdam, FedYogi, FedAdagrad
        algorithm = algorithm.with_model_pipeline(server_optimizer=s.server_optimizer())
    if config.privacy.mode == "central":
        from cohort.privacy import with_privacy

        algorithm = with_privacy(algorithm, config.privacy.mechanism())
    c = config.compression
    if c.kind != "none":
        if _async_policy(config) is not None:
            raise ConfigError("compression.kind must be 'none' with an asynchronous server.policy: its staleness "
                              "weighting works on dense updates (use server.policy = 'sync')")
        if config.secagg.mode != "none":
            raise ConfigError("compression.kind must be 'none' with secure aggregation: its masked vectors are "
                              "already fixed-point in the ring, and the server cannot decode a masked update")
        from cohort.client.compression import with_compression

        algorithm = with_compression(algorithm, c.kind, c.topk_fraction)
    if config.secagg.mode != "none":
        from cohort.secagg.settings import with_secure_aggregation

        algorithm = with_secure_aggregation(algorithm, config.secagg.settings())
    if bound_mode(config) == "auto":
        algorithm = algorithm.with_bound(s.bound())
    return algorithm


def bound_mode(config: RunConfig) -> str:
    """How this run bounds each client's update: "auto" (the server's adaptive bound), "fixed"
    (server.norm_bound), "dp" (central DP's clip is the bound), "secagg" (the server never sees an
    update: each client clips every coordinate to secagg.clip_range before masking) or "off"."""
    s = config.server
    if config.secagg.mode != "none":
        return "secagg"
    if config.privacy.mode == "central":
        return "dp"
    if s.norm_bound == "auto":
        return "auto"
    return "fixed" if s.norm_bound else "off"


def protections(config: RunConfig) -> str:
    """One line: which protections this run has on (the start line of `cohort run` and `cohort server`)."""
    s = config.server
    mode = bound_mode(config)
    bound = {"auto": lambda: f"updates bounded at {s.norm_bound_multiplier:g}× the recent median norm and "
                             f"{s.weight_bound_multiplier:g}× the median weight",
             "fixed": lambda: f"updates bounded at norm {s.norm_bound:g}",
             "dp": lambda: f"updates clipped at norm {config.privacy.clip:g} (central DP)",
             "secagg": lambda: f"updates clipped by each client to ±{config.secagg.clip_range:g} a coordinate",
             "off": lambda: "updates NOT bounded (server.norm_bound = 0): one client can ruin the model"}[mode]()
    parts = [bound]
    if s.aggregator != "mean":
        parts.append(f"robust combine {s.aggregator}")
    if config.privacy.mode == "central":
        p = config.privacy
        from cohort.privacy.central import INSECURE_KEY_ENV, insecure_key

        parts.append(f"central DP (z = {p.noise_multiplier:g}, δ = {p.delta:g}"
                     + (f", ε ≤ {p.epsilon_max:g}" if p.epsilon_max else "") + ", noise under a secret key"
                     + (f" — NO: TEST MODE, the key comes from ${INSECURE_KEY_ENV} and anyone who knows it can "
                        "remove the noise" if insecure_key() else "") + ")")
    if config.secagg.mode != "none":
        parts.append(f"{config.secagg.mode} (threshold {config.secagg.threshold:g} of the cohort; the server sees sums "
                     "only, so the mean counts every client once, whatever server.weighted says)")
    return "protections: " + "; ".join(parts)


def check_client_privacy(config: RunConfig, algorithm: Algorithm) -> None:
    """Client-side privacy ([client] ldp, dp_sgd) runs where it is built: refuse the rest at start, from what
    ``algorithm`` declares (the groups it sends, its needs, its client half)."""
    from cohort.core.types import MODEL

    if config.client.ldp and config.model.framework != "torch":
        raise ConfigError(f"client.ldp (local DP) is built into the torch framework's client; this run has {config.model.framework!r}")
    others = sorted(g for g in algorithm.aggregators if g != MODEL)
    if config.client.ldp and others:
        raise ConfigError(f"client.ldp noises the model update only; {config.server.algorithm} also sends "
                          f"{', '.join(repr(g) for g in others)} (SCAFFOLD: its control variates), which would leave "
                          "unprotected: use central DP ([privacy] mode = 'central') or another algorithm")
    if config.client.ldp and algorithm.needs.personal:
        raise ConfigError(f"client.ldp noises every local training's delta, and {config.server.algorithm}'s clients also "
                          "train a personal model that never leaves them, which it would spoil for nothing: use central "
                          "DP ([privacy] mode = 'central') or secure aggregation with it")
    if config.client.dp_sgd and (config.model.framework != "torch" or not algorithm.client.plain_steps):
        raise ConfigError(f"client.dp_sgd (Opacus) runs in the torch framework's plain local steps, with "
                          f"server.algorithm = 'fedavg'; this run has {config.model.framework!r} and "
                          f"{config.server.algorithm!r}")


def flip_attackers_labels(train: ArrayDataset, partition: Partition, config: RunConfig) -> ArrayDataset:
    """``[attack] kind = "label_flip"``: the attackers' examples carry labels ``c → C − 1 − c``."""
    from cohort.client.attacks import choose_attackers, flip_labels

    if train.task != "classification":
        raise ConfigError("attack.kind = 'label_flip' needs a classification dataset")
    attackers = choose_attackers(len(partition), config.attack.fraction, config.seed)
    idx = np.concatenate([partition[c] for c in sorted(attackers)]) if attackers else np.zeros(0, np.int64)
    return dataclasses.replace(train, y=flip_labels(train.y, idx, train.num_classes))


def loop_settings(config: RunConfig) -> LoopSettings:
    s, ev = config.server, config.evaluate
    return LoopSettings(
        rounds=config.rounds, fraction=s.fraction, min_clients=s.min_clients,
        min_successful_clients=s.min_successful_clients, max_failed_rounds=s.max_failed_rounds,
        round_timeout_s=s.round_timeout_s or None, evaluate_every=ev.every,
        federated_fraction=config.federated_fraction,
        target=None if ev.target is None else Target(ev.target_metric, ev.target, ev.target_mode),
        policy=_async_policy(config),
        speed_spread=config.simulation.speed_spread, over_selection=s.over_selection,
        network=_network(config),
        record_fields=(("update_bound", bound_mode(config)),),  # which protection bounds each update (bound_mode)
        evaluate_initial=ev.initial,
    )


def _network(config: RunConfig) -> tuple[float, float, float] | None:
    n = config.network
    return (n.latency_s, n.bandwidth_mbps, n.spread) if n.latency_s > 0 or n.bandwidth_mbps > 0 else None


def _async_policy(config: RunConfig) -> FedBuff | None:
    """The round policy ``server.policy`` names, built from its own section (None: synchronous rounds)."""
    kind = POLICIES[config.server.policy]
    return kind.build(config.chosen("server.policy")) if kind.build is not None else None
