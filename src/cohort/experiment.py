"""From a config to a finished run: build everything (checking it all before any training), run the
rounds, write the run folder, checkpoint after every round, resume a stopped run. The CLI and the
tests both go through here. The framework (torch today) is reached through ``cohort.frameworks``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cohort import data as datasets
from cohort import frameworks
from cohort.algorithms import Algorithm
from cohort.channel.base import SimulationChannel
from cohort.client.store import ClientStateStore
from cohort.config import RunConfig
from cohort.core.collector import frozen_heap
from cohort.core.arrays import num_parameters
from cohort.core.errors import CohortError, ConfigError, RoundFailed
from cohort.data import ArrayDataset, Partition
from cohort.data.from_config import federated_data
from cohort.frameworks import Factory
from cohort.server import checkpoint
from cohort.recipe import check_client_privacy, flip_attackers_labels, loop_settings, make_algorithm
from cohort.server.loop import LoopSettings, check_protections, privacy_refusal, run_rounds
from cohort.server.state import ServerState, initial_state
from cohort.tracking import ConsoleProgress
from cohort.tracking.run_folder import RunFolder


class Terminated(BaseException):
    """SIGTERM arrived (kill, docker stop, systemd, Slurm): stop like Ctrl-C, keeping the finished rounds."""


@dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built and checked from a config."""

    config: RunConfig
    train: ArrayDataset  # the clients' data, all of it (clients are index sets into it)
    test: ArrayDataset | None  # the server's test set
    partition: Partition  # client -> training example indices
    holdout: Partition | None  # client -> held-out example indices (federated evaluation)
    framework: frameworks.Framework
    model_fn: Callable[[], Any]
    algorithm: Algorithm
    settings: LoopSettings
    cohort_size: int  # clients each round takes updates from
    client_names: list[str] | None = None  # the sites' own names (natural partitions)
    remote: bool = False  # a deployment's sites hold the rows; ``train`` is one made-up row of their shape

    @property
    def num_clients(self) -> int:
        return len(self.partition)

    def client_fn(self) -> Callable[[int], Any]:
        fn = self.framework.client_fn(self.model_fn, self.train, self.partition, self.holdout,
                                      self.config.client, self.config.seed)
        a = self.config.attack
        if a.kind in ("none", "label_flip"):  # label flipping is in the data already (build)
            return fn
        from cohort.client.attacks import Attack

        return Attack(fn, self.attackers, a.kind, a.scale, a.noise_std, self.config.seed)

    @property
    def attackers(self) -> frozenset[int]:
        """The clients that attack (``[attack]``): a seeded choice."""
        from cohort.client.attacks import choose_attackers

        a = self.config.attack
        return choose_attackers(self.num_clients, a.fraction, self.config.seed) if a.kind != "none" else frozenset()

    def channel(self) -> SimulationChannel:
        return simulation_channel(self.client_fn(), self.algorithm, self.config)

    @property
    def server_test_set(self) -> bool:
        """Whether the server holds a test set to evaluate on (not with natural partitions or deployed sites)."""
        return self.test is not None

    def evaluator(self) -> Callable | None:
        if self.test is None or not self.config.evaluate.centralized:
            return None
        return server_threads(self.framework.evaluator(self.model_fn, self.test), self.config)

    def reported(self) -> list[str]:
        """The metrics this run's records hold."""
        ev = self.config.evaluate
        return _reported_metrics(self.train.task, centralized=ev.centralized and self.test is not None,
                                 federated=self.config.federated_fraction > 0,
                                 personal=self.algorithm.needs.personal)

    @property
    def _records_clients(self) -> bool:
        """Whether the server may record each client's figures (not under secure aggregation's sums)."""
        rounds = self.algorithm.rounds
        return rounds is None or rounds.records_clients

    def example_counts(self) -> np.ndarray | None:
        """Each client's training examples, when the server may record them."""
        return None if not self._records_clients else self.partition.sizes()

    @property
    def native_save(self) -> Callable | None:
        """The framework's own model format, written beside the safetensors file."""
        return self.framework.save_model

    def describe_clients(self) -> str:
        """Clients, their sizes and, for classification, their label histograms; under secure
        aggregation only their number and total, since the server records no client's figures."""
        if not self._records_clients:
            total = "" if hasattr(self.partition, "federation") else f", {int(self.partition.sizes().sum())} examples"
            return (f"{self.num_clients} clients{total}\nexamples per client: not recorded (secure aggregation: the "
                    "server sees sums only)\nlabels per client: not recorded (secure aggregation)")
        if hasattr(self.partition, "federation"):  # generated on demand: describe a sample
            sizes = self.partition.sizes(limit=1000)
            return (f"{self.num_clients} clients, generated on demand from (seed, client id); sizes of the first "
                    f"{len(sizes)}: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}\n"
                    f"examples per client: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}\n"
                    "labels per client: (not listed: the clients are not stored)")
        named = ""
        if self.remote:  # a deployment's sites: their rows stay with them
            sizes = self.partition.sizes()
            held = self.holdout.sizes() if self.holdout is not None else 0
            return (f"{len(sizes)} sites, {sizes.sum()} training rows\nexamples per client: min {sizes.min()}, median "
                    f"{int(np.median(sizes))}, max {sizes.max()}\nlabels per client: held by the sites (the server "
                    "reads no row)\nclients: "
                    + ", ".join(f"{i} {name} ({n})" for i, (name, n) in enumerate(zip(self.client_names, sizes + held))))
        if self.client_names is not None:
            sizes = self.partition.sizes() + (self.holdout.sizes() if self.holdout is not None else 0)
            named = "\nclients: " + ", ".join(f"{i} {name} ({n})" for i, (name, n) in enumerate(zip(self.client_names, sizes)))
        if self.train.task == "classification":
            return datasets.describe(self.train.y, self.partition, self.train.num_classes) + named
        sizes = self.partition.sizes()
        return (f"{len(sizes)} clients, {sizes.sum()} examples\nexamples per client: min {sizes.min()}, "
                f"median {int(np.median(sizes))}, max {sizes.max()}\n" + " ".join(map(str, sizes[:50])) + named)

    def initial_state(self) -> ServerState:
        return initial_state(self.algorithm, self.framework.initial_arrays(self.model_fn, self.config.seed), self.config.seed)


def build(config: RunConfig, sites=None) -> Experiment:
    """Load and split the data, build model and algorithm; raise ConfigError or DataError on anything
    that cannot work, before any training starts. ``sites``: what a deployment's sites agreed
    (:func:`cohort.data.exchange.agree`), for a server that reads no row."""
    framework = frameworks.get(config.model.framework)
    if sites is not None:
        from cohort.data.exchange import remote_data

        if config.attack.kind != "none":
            raise ConfigError("attack.kind simulates attackers among the clients; deployed sites are real clients: "
                              "set attack.kind = 'none'")
        fed = remote_data(sites, config.data)
    else:
        fed = federated_data(config.data, config.seed)
    train, test, partition, holdout = fed.train, fed.test, fed.partition, fed.holdout
    outputs = train.num_classes if train.task == "classification" else 1
    factory = Factory(config.model.factory, tuple(train.feature_shape), outputs) if config.model.factory else None
    if config.data.dataset == "synthetic" and (framework.name != "torch" or config.attack.kind == "label_flip"):
        raise ConfigError("data.dataset = 'synthetic' generates each client on demand for the torch framework; it "
                          "takes model.framework = 'torch' and no attack.kind = 'label_flip'")
    if framework.algorithms is not None and config.server.algorithm not in framework.algorithms:
        raise ConfigError(f"server.algorithm = {config.server.algorithm!r} changes local training in a way the "
                          f"{framework.name} client cannot (it trains with the model's own fit); with model.framework = "
                          f"{framework.name!r} use {' or '.join(repr(a) for a in framework.algorithms)}, or the torch framework")
    if factory is None:
        _check_model_task(config.model.name, train.task)
        if config.model.name not in framework.models:
            raise ConfigError(f"model.name is {config.model.name!r}; expected one of {', '.join(framework.models)}"
                              if framework.models else f"model.framework = {framework.name!r} builds your own model: "
                              f"set model.factory = 'module:function' (see examples/)")
    try:
        model_fn = framework.build_model(config.model.name, factory, tuple(train.feature_shape), outputs, train)
    except ConfigError as e:  # name the setting and the data it was checked against
        which = f"model.factory is {factory.spec!r}" if factory else f"model.name is {config.model.name!r}"
        raise ConfigError(f"{which}, which does not fit data.dataset = "
                          f"{config.data.dataset!r} (examples of shape {tuple(train.feature_shape)}, "
                          f"{outputs} output{'s' if outputs != 1 else ''}): {e}") from e
    ev = config.evaluate
    if config.federated_fraction > 0 and holdout is None:
        raise ConfigError(f"federated evaluation (evaluate.federated_fraction = {config.federated_fraction:g}"
                          f"{'' if config.evaluate.federated_fraction is not None else ', the default here'}) needs "
                          "held-out client data: set data.holdout_fraction > 0, or evaluate.federated_fraction = 0")
    algorithm = make_algorithm(config)
    needs, name = algorithm.needs, config.server.algorithm
    if needs.plain_sgd and (config.client.optimizer != "sgd" or config.client.momentum > 0):
        raise ConfigError(f"server.algorithm = {name!r} needs plain local SGD (SCAFFOLD's control variates are "
                          f"(x − y)/(K·lr)); client.optimizer is {config.client.optimizer!r} and client.momentum "
                          f"{config.client.momentum}: set client.optimizer = 'sgd' and client.momentum = 0, or use fedavg/fedprox")
    if needs.partial_model and ev.centralized and test is not None:
        raise ConfigError(f"server.algorithm = {name!r} keeps part of the model on the clients ({needs.partial_model}), so "
                          "the server has no complete model to test on its own data: set evaluate.centralized = false, "
                          "and evaluate every client on its own held-out data with data.holdout_fraction > 0 and "
                          "evaluate.federated_fraction > 0")
    settings = loop_settings(config)
    reported = _reported_metrics(train.task, centralized=ev.centralized and test is not None,
                                 federated=config.federated_fraction > 0, personal=needs.personal)
    size = settings.check(len(partition), reported)
    check_client_privacy(config, algorithm)
    if config.output.trackers:
        from cohort.tracking.trackers import check_trackers

        check_trackers(config.output.trackers)
    if config.attack.kind == "label_flip":
        train = flip_attackers_labels(train, partition, config)
    check_protections(algorithm, settings, size)
    algorithm.check_cohort(size)
    return Experiment(config, train, test, partition, holdout, framework, model_fn, algorithm, settings, size, fed.names,
                      remote=sites is not None)


REGRESSORS = ("linear_regression", "sgd_regressor")


def _check_model_task(model: str, task: str) -> None:
    if model in REGRESSORS and task != "regression":
        raise ConfigError(f"model.name = {model!r} needs a regression dataset; for class labels use 'logistic_regression'")
    if model not in REGRESSORS and task == "regression":
        raise ConfigError(f"model.name = {model!r} is a classifier; the dataset is a regression one: use 'linear_regression' (torch) or 'sgd_regressor' (sklearn)")


def _reported_metrics(task: str, *, centralized: bool, federated: bool, personal: bool = False) -> list[str]:
    names = ["loss", "accuracy"] if task == "classification" else ["loss", "r2"]
    out = ["train_loss"]
    out += names if centralized else []
    out += [f"federated_{m}" for m in names] if federated else []
    out += [f"federated_personal_{m}" for m in names] if federated and personal else []
    return out


def _headline_metric(exp: Experiment) -> tuple[str, str]:
    """The metric a run is judged by: the target's if the run reports it, else its main quality metric."""
    ev = exp.config.evaluate
    available = exp.reported()
    if available is None or ev.target_metric in available:  # None: an app's own evaluation names its metrics
        return ev.target_metric, ev.target_mode
    metric = next((m for m in ("accuracy", "r2", "federated_accuracy", "federated_r2", "train_loss", *available)
                   if m in available), "train_loss")
    return metric, "min" if metric.endswith("loss") else "max"


def simulation_channel(client_fn: Callable, algorithm: Algorithm, config: RunConfig) -> SimulationChannel:
    """The simulation backend ``[simulation]`` names, with the per-client state store it sizes."""
    from cohort.simulation import make_channel

    sim = config.simulation
    return make_channel(client_fn, algorithm, sim.backend, workers=sim.workers, threads=sim.threads,
                        states=ClientStateStore(sim.client_state_mb * 2**20), ray_address=sim.ray_address)


def server_threads(evaluate: Callable, config: RunConfig) -> Callable:
    """``evaluate`` run with the torch threads of ``evaluate.threads``, unset: the clients' (simulation.threads),
    so the server's evaluation neither races the clients for cores nor depends on torch's default."""
    from cohort.channel.inprocess import torch_threads
    from cohort.server.loop import RoundEvaluate, evaluated

    n = config.evaluate.threads if config.evaluate.threads is not None else config.simulation.threads

    def threaded(arrays, r=0):
        with torch_threads(n):
            return evaluated(evaluate, arrays, r)

    return RoundEvaluate(threaded)


@dataclass(frozen=True)
class RunResult:
    state: ServerState
    stopped_by: str  # "rounds", "target", "failed", "interrupted", "terminated" or "error: ..."
    folder: Path | None
    summary: dict[str, Any]


def run(config: RunConfig, *, progress: ConsoleProgress | None = None, write: bool = True,
        experiment: Experiment | None = None, resume: str | Path | None = None,
        on_folder: Callable[[Path], None] | None = None, channel: Any = None) -> RunResult:
    """Build (unless given) and run ``config``; write its folder unless ``write=False``. With
    ``resume``, continue the run in that folder from its latest intact checkpoint.

    ``channel`` replaces the simulation channel (``cohort server`` passes its gRPC channel).

    Whatever stops the run (the round limit, the target, too many failed rounds, Ctrl-C, SIGTERM),
    the metrics so far, the last global model and a summary are written before returning or
    re-raising; with checkpoints on, every finished round can be resumed.
    """
    exp = experiment or build(config)
    test_set = exp.server_test_set  # the folder's config.toml says what runs (no test set: no central evaluation)
    config = resolved_config(config, test_set=test_set)
    started = time.perf_counter()
    stopped_by, error, folder = "rounds", None, None
    given, channel = channel, None
    state = None
    unwritten = None  # a finished round's record not yet in the metrics files
    trackers = None
    try:
        if resume is not None:
            folder = RunFolder.reopen(resume)
            check_resumable(folder.path, config, test_set=test_set)
            found = checkpoint.load(folder.path / "checkpoints")
            for problem in found.skipped:
                print(f"warning: skipped a damaged checkpoint ({problem}); resuming from {found.path.name}")
            checkpoint.check_fits(found.state, exp.algorithm)
            state = found.state
            print(f"resuming {folder.path} after round {state.round} (checkpoint {found.path.name})")
            folder.write_config(config.to_toml())  # e.g. a raised round limit
            folder.rewrite_metrics(state.history)  # rounds after the checkpoint are run again
        else:
            state = exp.initial_state()
            why = privacy_refusal(exp.algorithm, state, exp.num_clients, exp.settings.make_policy())
            if why:  # before anything is written
                raise ConfigError(f"privacy.epsilon_max allows no round: {why}")
            if write:
                folder = RunFolder(config.output.dir, config.name)
                folder.write_config(config.to_toml())
                folder.write_text("clients.txt", exp.describe_clients() + "\n")
        if folder is not None:
            folder.client_names = exp.client_names
            if config.output.trackers:
                from cohort.tracking.trackers import Trackers

                trackers = Trackers(config.output.trackers, folder.path, config.name, config.to_dict(), config.to_toml(),
                                    exp.client_names)
        if folder is not None and on_folder is not None:
            on_folder(folder.path)
        channel = given if given is not None else exp.channel()
        states = getattr(channel, "states", None)  # a simulation's per-client store; deployed clients keep their own
        if resume is not None and states is not None:
            states.replace_all(found.clients)
        # a simulation's objects alive now stay out of the collector's passes (core/collector.py); a deployed
        # server's connections come and go during the run, and are collected as they go
        with frozen_heap() if given is None else contextlib.nullcontext():
            rounds = run_rounds(state, algorithm=exp.algorithm, channel=channel, num_clients=exp.num_clients,
                                settings=exp.settings, evaluate=exp.evaluator())
            while True:
                try:
                    state, record = next(rounds)
                except StopIteration as stop:
                    stopped_by = stop.value
                    break
                unwritten = record  # until its line is out: a signal landing now must not lose it (below)
                if folder is not None:
                    folder.write_round(record)
                unwritten = None
                if trackers is not None:
                    trackers.log(record)
                if folder is not None and config.output.checkpoint:
                    checkpoint.save(folder.path / "checkpoints", state, dict(states.items()) if states is not None else {})
                if progress is not None:
                    progress(record, state)
    except RoundFailed as e:
        state, stopped_by, error = e.state, "failed", e
    except BaseException as e:  # Ctrl-C, SIGTERM, or a fault outside client code: keep the finished rounds, re-raise
        error = e
        stopped_by = ("interrupted" if isinstance(e, KeyboardInterrupt) else "terminated" if isinstance(e, Terminated)
                      else f"error: {type(e).__name__}: {e}")
        if unwritten is not None and folder is not None:  # the round finished; its record was not yet written
            try:
                folder.write_round(unwritten)
            except (OSError, CohortError):
                pass
    finally:
        if progress is not None:
            progress.close()
    # The model and summary are written before the channel is closed (stopping worker processes
    # takes a moment, and a second Ctrl-C then must not cost them).
    try:
        if state is None:  # nothing ran (e.g. a checkpoint that cannot be read)
            raise error
        summary = _summary(exp, state, stopped_by, time.perf_counter() - started, folder)
        if folder is not None:
            try:
                meta = {"round": str(state.round), "name": config.name}
                if exp.algorithm.needs.partial_model:  # say what is not in it
                    meta["note"] = exp.algorithm.needs.partial_model
                folder.save_model(state.model, meta, exp.native_save)
                folder.write_summary(summary)
            except (OSError, CohortError) as e:
                if error is None:
                    raise
                print(f"warning: could not write the final model or summary: {e}")
    finally:
        if trackers is not None:
            trackers.close(stopped_by)
        if folder is not None:
            folder.release()
        closing = channel if channel is not None else given
        if closing is not None:
            closing.close()
    if error is not None:
        raise error
    return RunResult(state, stopped_by, folder.path if folder else None, summary)


# Settings a resumed run may change: they do not change what the finished rounds computed.
RESUME_MAY_CHANGE = ("rounds", "output.", "simulation.backend", "simulation.workers", "simulation.ray_address", "data.dir", "data.download",
                     "evaluate.target", "evaluate.target_metric")


def resolved_config(config: RunConfig, *, test_set: bool) -> RunConfig:
    """``config`` as the run carries it out, for its folder's ``config.toml``: with no server test set
    (natural partitions, a deployment's sites: each site keeps its own held-out data) nothing is evaluated
    centrally, so ``evaluate.centralized`` is written false rather than the default's true."""
    if test_set or not config.evaluate.centralized:
        return config
    return replace(config, evaluate=replace(config.evaluate, centralized=False))


def check_resumable(folder: Path, config: RunConfig, *, test_set: bool = True) -> None:
    """Raise ConfigError if ``config`` differs from the run's own (``folder/config.toml``) in a setting
    that would make the resumed rounds a different run. ``test_set``: whether the run has a server test
    set; without one, a folder written before configs were resolved (centralized = true) still fits."""
    from cohort.config import load_config

    from cohort.core.tree import flatten

    before = resolved_config(load_config(folder / "config.toml"), test_set=test_set)
    before, now = flatten(before.to_dict()), flatten(resolved_config(config, test_set=test_set).to_dict())
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)
                     and not k.startswith(RESUME_MAY_CHANGE))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"--resume {str(folder)!r}: {shown} differ from the run's own config; a resumed run "
                          f"may change only {', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)}. Start a new run instead")


def _summary(exp: Experiment, state: ServerState, stopped_by: str, seconds: float, folder: RunFolder | None) -> dict[str, Any]:
    metric, mode = _headline_metric(exp)
    best = state.best(metric, mode)
    last_with = next((r for r in reversed(state.history) if isinstance(r.get(metric), (int, float))), None)
    final = {k: v for k, v in state.history[-1].items() if k != "failures"} if state.history else {}
    return {
        "name": exp.config.name,
        "folder": str(folder.path) if folder else None,
        "stopped_by": stopped_by,
        "rounds_completed": state.round,
        "model_version": state.version,
        # the best round is chosen on the test set, so it is optimistic: the last round is the honest figure
        "best": {"metric": metric, "value": best[metric], "round": best["round"]} if best else None,
        "last": {"metric": metric, "value": last_with[metric], "round": last_with["round"]} if last_with else None,
        "final": final,
        "seconds": round(seconds, 3),
        "simulated_time": state.clock,
        "num_clients": exp.num_clients,
        "num_parameters": num_parameters(state.model),
        **({} if (counts := exp.example_counts()) is None else  # under secure aggregation no client's count is recorded
           {"examples_per_client": {k: int(f(counts)) for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}}),
    }
