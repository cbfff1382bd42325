"""From a config to a finished run: build everything (checking it all before any training), run the
rounds, write the run folder. The CLI and the tests both go through here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohort import data as datasets
from cohort.algorithms import ALGORITHMS, Algorithm
from cohort.channel import Channel, InProcessChannel, ProcessPoolChannel
from cohort.client.torch import TorchClientFactory, TorchEvaluator, initial_arrays, to_tensors
from cohort.config import DataConfig, RunConfig
from cohort.core.arrays import num_parameters
from cohort.core.errors import ConfigError, RoundFailed
from cohort.data import ArrayDataset, Partition
from cohort.models import check_fits, model_factory
from cohort.server.loop import LoopSettings, Target, run_rounds
from cohort.server.state import ServerState
from cohort.tracking import ConsoleProgress
from cohort.tracking.run_folder import RunFolder


@dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built and checked from a config."""

    config: RunConfig
    train: ArrayDataset  # the clients' data, all of it (clients are index sets into it)
    test: ArrayDataset | None  # the server's test set
    partition: Partition  # client -> training example indices
    holdout: Partition | None  # client -> held-out example indices (federated evaluation)
    model_fn: Callable[[], torch.nn.Module]
    algorithm: Algorithm
    settings: LoopSettings

    @property
    def num_clients(self) -> int:
        return len(self.partition)

    def client_fn(self) -> TorchClientFactory:
        return TorchClientFactory(self.model_fn, self.train, self.partition, self.holdout,
                                  settings=self.config.client, seed=self.config.seed)

    def channel(self) -> Channel:
        sim = self.config.simulation
        if sim.backend == "processes":
            return ProcessPoolChannel(self.client_fn(), workers=sim.workers, threads=sim.threads)
        return InProcessChannel(self.client_fn(), threads=sim.threads)

    def evaluator(self) -> TorchEvaluator | None:
        if self.test is None or not self.config.evaluate.centralized:
            return None
        return TorchEvaluator(self.model_fn, self.test)

    def describe_clients(self) -> str:
        """Clients, their sizes and, for classification, their label histograms."""
        if self.train.task == "classification":
            return datasets.describe(self.train.y, self.partition, self.train.num_classes)
        sizes = self.partition.sizes()
        return (f"{len(sizes)} clients, {sizes.sum()} examples\nexamples per client: min {sizes.min()}, "
                f"median {int(np.median(sizes))}, max {sizes.max()}\n" + " ".join(map(str, sizes[:50])))

    def initial_state(self) -> ServerState:
        arrays = initial_arrays(self.model_fn, self.config.seed)
        return ServerState(0, arrays, self.algorithm.aggregator.init(arrays), self.config.seed)


def build(config: RunConfig) -> Experiment:
    """Load and split the data, build model and algorithm; raise ConfigError or DataError on anything
    that cannot work, before any training starts."""
    train, test = load_data(config.data, config.seed)
    partition, holdout = partition_data(train, config.data, config.seed)
    outputs = train.num_classes if train.task == "classification" else 1
    _check_model_task(config.model.name, train.task)
    model_fn = model_factory(config.model.name, train.feature_shape, outputs)
    x, _ = to_tensors(train.x[:1], train.y[:1], train.x_scale)
    try:
        check_fits(model_fn, x[0], outputs, config.model.name)
    except ConfigError as e:  # name the setting and the data it was checked against
        raise ConfigError(f"model.name is {config.model.name!r}, which does not fit data.dataset = "
                          f"{config.data.dataset!r} (examples of shape {tuple(train.feature_shape)}, "
                          f"{outputs} output{'s' if outputs != 1 else ''}): {e}") from e

    s, ev = config.server, config.evaluate
    algorithm = ALGORITHMS[s.algorithm](server_lr=s.lr, server_momentum=s.momentum, weighted=s.weighted)
    if ev.federated_fraction > 0 and holdout is None:
        raise ConfigError("evaluate.federated_fraction > 0 needs held-out client data: set data.holdout_fraction > 0")
    settings = LoopSettings(
        rounds=config.rounds, fraction=s.fraction, min_clients=s.min_clients,
        min_successful_clients=s.min_successful_clients, max_failed_rounds=s.max_failed_rounds,
        round_timeout_s=s.round_timeout_s or None, evaluate_every=ev.every,
        federated_fraction=ev.federated_fraction,
        target=None if ev.target is None else Target(ev.target_metric, ev.target, ev.target_mode),
    )
    settings.check(len(partition))
    if ev.target is not None:
        available = _reported_metrics(train.task, centralized=ev.centralized and test is not None,
                                      federated=ev.federated_fraction > 0)
        if ev.target_metric not in available:
            raise ConfigError(f"evaluate.target_metric is {ev.target_metric!r}, which this run does not report; "
                              f"expected one of {', '.join(available)}")
    return Experiment(config, train, test, partition, holdout, model_fn, algorithm, settings)


def load_data(cfg: DataConfig, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    if cfg.dataset == "mnist":
        return datasets.load_mnist(cfg.dir or None, download=cfg.download)
    loaders = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes,
               "csv": lambda: datasets.load_csv(cfg.csv_path, cfg.csv_target, task=cfg.csv_task)}
    train, test = datasets.train_test_split(loaders[cfg.dataset](), cfg.test_fraction, seed)
    return datasets.standardize(train, test) if cfg.standardize else (train, test)


def partition_data(train: ArrayDataset, cfg: DataConfig, seed: int) -> tuple[Partition, Partition | None]:
    n = len(train)
    if cfg.num_clients > n:
        raise ConfigError(f"data.num_clients is {cfg.num_clients} but the training data has only {n} examples; "
                          f"use at most {n} clients")
    if cfg.partition in ("shards", "dirichlet") and train.task != "classification":
        raise ConfigError(f"data.partition = {cfg.partition!r} splits by class label; {train.name or 'this dataset'} "
                          "is a regression dataset: use 'iid' or 'quantity'")
    if cfg.partition == "iid":
        partition = datasets.iid(n, cfg.num_clients, seed)
    elif cfg.partition == "shards":
        partition = datasets.shards(train.y, cfg.num_clients, seed, shards_per_client=cfg.shards_per_client)
    elif cfg.partition == "dirichlet":
        partition = datasets.dirichlet(train.y, cfg.num_clients, seed, alpha=cfg.alpha)
    else:
        partition = datasets.quantity_skew(n, cfg.num_clients, seed, alpha=cfg.alpha)
    if cfg.holdout_fraction == 0:
        return partition, None
    return datasets.split_holdout(partition, cfg.holdout_fraction, seed)


def _check_model_task(model: str, task: str) -> None:
    if model == "linear_regression" and task != "regression":
        raise ConfigError("model.name = 'linear_regression' needs a regression dataset; for class labels use 'logistic_regression'")
    if model != "linear_regression" and task == "regression":
        raise ConfigError(f"model.name = {model!r} is a classifier; the dataset is a regression one: use 'linear_regression'")


def _reported_metrics(task: str, *, centralized: bool, federated: bool) -> list[str]:
    names = ["loss", "accuracy"] if task == "classification" else ["loss", "r2"]
    out = ["train_loss"]
    out += names if centralized else []
    out += [f"federated_{m}" for m in names] if federated else []
    return out


def _headline_metric(exp: Experiment) -> tuple[str, str]:
    """The metric a run is judged by: the target's if the run reports it, else its main quality metric."""
    ev = exp.config.evaluate
    available = _reported_metrics(exp.train.task, centralized=ev.centralized and exp.test is not None,
                                  federated=ev.federated_fraction > 0)
    if ev.target_metric in available:
        return ev.target_metric, ev.target_mode
    metric = next(m for m in ("accuracy", "r2", "federated_accuracy", "federated_r2", "train_loss") if m in available)
    return metric, "min" if metric.endswith("loss") else "max"


@dataclass(frozen=True)
class RunResult:
    state: ServerState
    stopped_by: str  # "rounds", "target", "failed", "interrupted" or "error: ..."
    folder: Path | None
    summary: dict[str, Any]


def run(config: RunConfig, *, progress: ConsoleProgress | None = None, write: bool = True,
        experiment: Experiment | None = None) -> RunResult:
    """Build (unless given) and run ``config``; write its folder unless ``write=False``.

    Whatever stops the run (the round limit, the target, too many failed rounds, Ctrl-C), the metrics
    so far, the last global model and a summary are written before returning or re-raising.
    """
    exp = experiment or build(config)
    latest = [exp.initial_state()]
    folder = RunFolder(config.output.dir, config.name) if write else None
    on_round = [lambda record, state: latest.__setitem__(0, state)]
    if progress is not None:
        on_round.append(progress)
    started = time.perf_counter()
    stopped_by, error, channel = "rounds", None, None
    try:
        if folder is not None:
            folder.write_config(config.to_toml())
            folder.write_text("clients.txt", exp.describe_clients() + "\n")
            on_round.insert(1, folder.write_round)
        channel = exp.channel()
        state, stopped_by = run_rounds(latest[0], algorithm=exp.algorithm, channel=channel,
                                       num_clients=exp.num_clients, settings=exp.settings,
                                       evaluate=exp.evaluator(), on_round=on_round)
    except RoundFailed as e:
        state, stopped_by, error = e.state, "failed", e
    except BaseException as e:  # Ctrl-C, or a fault outside client code: keep the finished rounds, re-raise
        state, error = latest[0], e
        stopped_by = "interrupted" if isinstance(e, KeyboardInterrupt) else f"error: {type(e).__name__}: {e}"
    finally:
        if channel is not None:
            channel.close()
        if progress is not None:
            progress.close()
    summary = _summary(exp, state, stopped_by, time.perf_counter() - started, folder)
    if folder is not None:
        try:
            folder.save_model(state.arrays, {"round": str(state.round), "name": config.name})
            folder.write_summary(summary)
        finally:
            folder.close()
    if error is not None:
        raise error
    return RunResult(state, stopped_by, folder.path if folder else None, summary)


def _summary(exp: Experiment, state: ServerState, stopped_by: str, seconds: float, folder: RunFolder | None) -> dict[str, Any]:
    metric, mode = _headline_metric(exp)
    best = state.best(metric, mode)
    last = {k: v for k, v in state.history[-1].items() if k != "failures"} if state.history else {}
    return {
        "name": exp.config.name,
        "folder": str(folder.path) if folder else None,
        "stopped_by": stopped_by,
        "rounds_completed": state.round,
        "best": {"metric": metric, "value": best[metric], "round": best["round"]} if best else None,
        "final": last,
        "seconds": round(seconds, 3),
        "num_clients": exp.num_clients,
        "num_parameters": num_parameters(state.arrays),
        "examples_per_client": {k: int(f(exp.partition.sizes())) for k, f in
                                (("min", np.min), ("median", np.median), ("max", np.max))},
    }
