"""Experiment configs: TOML files of plain, frozen dataclasses, with ``--set key=value`` overrides.

Every section checks its own values; unknown keys are errors with a suggestion (read by
:mod:`cohort.core.tables`, which a site's policy shares).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from cohort.algorithms import ALGORITHMS  # importing a component's module registers its section
from cohort.channel import BACKENDS
from cohort.client.settings import TrainSettings
from cohort.core.errors import ConfigError
from cohort.core.limits import MAX_LR, MAX_ROUNDS, MAX_SEED, MAX_TIMEOUT_S
from cohort.core.sections import SECTIONS
from cohort.core.tables import build, plain
from cohort.options import (  # the optional sections, and the check every section shares
    AttackConfig, CompressionConfig, NetworkConfig, PrivacyConfig, SecAggConfig, _check,
)
from cohort.server.kinds import POLICIES
from cohort.server.sampling import check_sampling

DATASETS = ("mnist", "breast_cancer", "diabetes", "csv", "shakespeare", "synthetic")
PARTITIONS = ("iid", "shards", "dirichlet", "quantity", "column", "files", "assigned", "speaker", "generated")
NATURAL = ("column", "files", "assigned", "speaker", "generated")  # partitions the data brings: one client per site, speaker, ...


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "breast_cancer"  # mnist | breast_cancer | diabetes | csv | shakespeare | synthetic (LEAF's, generated lazily)
    dir: str = ""  # folder of downloadable datasets; "" means $COHORT_DATA_DIR, else ~/.cache/cohort/data
    download: bool = True  # fetch missing files from the public mirrors (checksums verified)
    csv_path: str = ""  # dataset = "csv": the file (or data.client_files: one file per client)
    csv_target: str = ""  # dataset = "csv": the target column
    csv_task: str = "classification"  # dataset = "csv": classification | regression
    csv_columns: tuple[str, ...] = ()  # the column names of files without a header row
    csv_delimiter: str = ","  # one character between a row's fields, e.g. ";" or "\t"
    missing_values: tuple[str, ...] = ()  # codes that mean "missing" in every column, e.g. ["?", "NA"] (empty cells always do)
    missing_by_column: dict[str, tuple[str, ...]] = field(default_factory=dict)  # e.g. {chol = ["0"]}: 0 is impossible there
    categorical: tuple[str, ...] = ()  # columns of categories: one-hot encoded over the federation's categories (numbers canonical: 1 = 1.0 = " 1")
    missing_category: bool = False  # categorical columns: a missing cell is a category of its own ("<missing>"); false: all zeros
    impute: str = "none"  # missing numbers: none (refused) | mean | median | constant (impute_value)
    impute_value: float = 0.0  # impute = "constant": the number a missing cell becomes
    target_binarize: str = ""  # e.g. "> 0": a 0-4 diagnosis becomes 0 / 1
    target_classes: dict[str, int] = field(default_factory=dict)  # e.g. {"0" = 0, "1" = 1, "2" = 1}
    statistics: str = "federated"  # csv: imputation and z-scores from the federation's sums and counts | local (each client its own)
    test_fraction: float = 0.2  # server test split of datasets that have none (all but mnist); not with natural partitions
    standardize: bool = True  # z-score tabular features
    num_clients: int = 10  # clients the training data is split among (natural partitions: one per site)
    partition: str = "iid"  # iid | shards | dirichlet | quantity | column | files | assigned
    partition_column: str = ""  # partition = "column": one client per value of this column
    client_files: tuple[str, ...] = ()  # partition = "files": CSV files or globs, one client each (named by file stem)
    partition_file: str = ""  # partition = "assigned": a CSV of (row, client) giving each example's client
    shards_per_client: int = 2  # partition = "shards": label-sorted shards per client (McMahan: 2)
    seq_stride: int = 80  # shakespeare: a window of 80 characters every this many characters
    min_speeches: int = 10  # shakespeare: speakers with at least this many speeches are clients
    synthetic_alpha: float = 1.0  # synthetic: how much the clients' models differ (LEAF's α)
    synthetic_beta: float = 1.0  # synthetic: how much the clients' data differ (LEAF's β)
    alpha: float = 0.5  # partition = "dirichlet" | "quantity": concentration; small is skewed
    holdout_fraction: float | None = None  # share of each client's data kept for evaluation; unset: 0.2 for natural partitions, else 0
    holdout_rows: dict[str, int] = field(default_factory=dict)  # csv, natural partitions: rows each site keeps for evaluation, by name, e.g. {cleveland = 104, hungarian = 89}; instead of holdout_fraction
    holdout_column: str = ""  # csv, natural partitions: a column marking each row train or test (test rows are held out), as a benchmark's split gives it; not a feature; instead of holdout_fraction and holdout_rows

    def __post_init__(self) -> None:
        _check(self.dataset in DATASETS, "data.dataset", self.dataset, f"one of {', '.join(DATASETS)}")
        _check(self.partition in PARTITIONS, "data.partition", self.partition, f"one of {', '.join(PARTITIONS)}")
        _check(self.csv_task in ("classification", "regression"), "data.csv_task", self.csv_task, "'classification' or 'regression'")
        _check(self.num_clients >= 1, "data.num_clients", self.num_clients, "an integer >= 1")
        _check(self.shards_per_client >= 1, "data.shards_per_client", self.shards_per_client, "an integer >= 1")
        _check(0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction, "0 < fraction < 1")
        _check(0 < self.alpha < math.inf, "data.alpha", self.alpha, "a finite number > 0")
        _check(self.holdout_fraction is None or 0 <= self.holdout_fraction < 1, "data.holdout_fraction",
               self.holdout_fraction, "0 <= fraction < 1")
        if self.holdout_rows:
            _check(self.holdout_fraction is None, "data.holdout_fraction", self.holdout_fraction,
                   "unset when data.holdout_rows gives each site's held-out rows (one or the other)")
            _check(self.dataset == "csv" and self.partition in ("column", "files", "assigned"), "data.holdout_rows",
                   self.holdout_rows, "unset unless data.dataset = 'csv' with a natural partition (files, column or "
                   "assigned): its keys are the sites' names")
            _check(all(k and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10**9
                       for k, v in self.holdout_rows.items()), "data.holdout_rows", self.holdout_rows,
                   "a table of site name = rows it holds out, whole numbers from 1, e.g. {cleveland = 104}")
        if self.holdout_column:
            _check(self.holdout_fraction is None and not self.holdout_rows, "data.holdout_column", self.holdout_column,
                   "unset when data.holdout_fraction or data.holdout_rows chooses the held-out rows (one of the three)")
            _check(self.dataset == "csv" and self.partition in ("column", "files", "assigned"), "data.holdout_column",
                   self.holdout_column, "unset unless data.dataset = 'csv' with a natural partition (files, column or assigned)")
            _check(self.holdout_column not in (self.csv_target, self.partition_column, *self.categorical),
                   "data.holdout_column", self.holdout_column, "a column of its own, not the target, the partition "
                   "column or a categorical feature")
        _check(self.impute in ("none", "mean", "median", "constant"), "data.impute", self.impute, "one of none, mean, median, constant")
        _check(math.isfinite(self.impute_value), "data.impute_value", self.impute_value, "a finite number")
        _check(self.statistics in ("federated", "local"), "data.statistics", self.statistics, "'federated' or 'local'")
        _check(all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10_000 for v in self.target_classes.values()),
               "data.target_classes", self.target_classes, "a table of value = class, classes integers from 0")
        used = set(self.target_classes.values())
        _check(used == set(range(len(used))), "data.target_classes", self.target_classes,
               f"classes numbered 0 to {len(used) - 1} with none skipped (each class needs its values)")
        _check(not (self.target_binarize and self.target_classes), "data.target_binarize", self.target_binarize,
               "unset when data.target_classes is given (one target mapping)")
        if self.target_binarize:
            from cohort.data.features import parse_binarize

            parse_binarize(self.target_binarize)
        needs = {"column": ("partition_column", self.partition_column), "files": ("client_files", self.client_files),
                 "assigned": ("partition_file", self.partition_file)}
        for kind, (key, value) in needs.items():
            _check(bool(value) == (self.partition == kind), f"data.{key}", value,
                   f"set exactly when data.partition = {kind!r}")
        if self.partition in ("column", "files", "assigned"):
            _check(self.dataset == "csv", "data.dataset", self.dataset, f"'csv' with data.partition = {self.partition!r}")
        _check((self.dataset == "shakespeare") == (self.partition == "speaker"), "data.partition", self.partition,
               "'speaker' exactly when data.dataset = 'shakespeare' (one client per speaking role)")
        _check((self.dataset == "synthetic") == (self.partition == "generated"), "data.partition", self.partition,
               "'generated' exactly when data.dataset = 'synthetic' (each client made from its id)")
        _check(self.num_clients <= (100_000_000 if self.dataset == "synthetic" else 10_000_000), "data.num_clients",
               self.num_clients, "at most 10000000 (100000000 for generated synthetic clients)")
        _check(1 <= self.seq_stride <= 10_000, "data.seq_stride", self.seq_stride, "an integer from 1 to 10000")
        _check(1 <= self.min_speeches <= 10_000, "data.min_speeches", self.min_speeches, "an integer from 1 to 10000")
        if self.dataset == "csv":
            _check(bool(self.csv_target), "data.csv_target", self.csv_target, "the target column when data.dataset = 'csv'")
            _check(bool(self.csv_path) != bool(self.client_files), "data.csv_path", self.csv_path,
                   "set when data.dataset = 'csv', unless data.client_files gives one file per client")

    @property
    def natural(self) -> bool:
        return self.partition in NATURAL

    @property
    def holdout(self) -> float:
        """The held-out share in effect: unset, 0.2 for natural partitions (each site keeps a test share);
        0 with holdout_rows or holdout_column, which choose the rows instead (see holds_out)."""
        if self.holdout_rows or self.holdout_column:
            return 0.0
        return self.holdout_fraction if self.holdout_fraction is not None else (0.2 if self.natural else 0.0)

    @property
    def holds_out(self) -> bool:
        """Every client keeps rows for evaluation: a share (holdout), per-site counts (holdout_rows) or the
        rows its split column marks test (holdout_column)."""
        return bool(self.holdout_rows) or bool(self.holdout_column) or self.holdout > 0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "logistic_regression"  # mnist_2nn | mnist_cnn | mlp | cnn | linear_regression | logistic_regression
    framework: str = "torch"  # torch | keras | sklearn: the adapter that builds and trains it (cohort.frameworks)
    factory: str = ""  # your own model: "module:function" or "file.py:function" (with (input_shape, outputs) or none); wins over name

    def __post_init__(self) -> None:
        from cohort import frameworks

        _check(self.framework in frameworks.names(), "model.framework", self.framework, f"one of {', '.join(frameworks.names())}")
        if self.factory:
            frameworks.check_factory_spec(self.factory)


@dataclass(frozen=True)
class ServerConfig:
    algorithm: str = "fedavg"  # fedavg | fedsgd | fedprox | scaffold | fedper | ditto (own settings: [fedprox], [fedper], [ditto])
    policy: str = "sync"  # sync: a sampled cohort per round | fedbuff: buffered asynchronous ([fedbuff]) | fedasync ([fedasync])
    fraction: float = 1.0  # C: fraction of clients sampled each round
    min_clients: int = 1  # at least this many clients each round
    weighted: bool = True  # weight clients by example count (false: unweighted mean)
    lr: float = 1.0  # server learning rate (FedAvg: 1; FedSGD: the SGD step size)
    momentum: float = 0.0  # server momentum (FedAvgM)
    optimizer: str = "sgd"  # sgd (with momentum: FedAvgM) | adam | yogi | adagrad (Reddi et al. 2021; server.lr is η)
    beta1: float = 0.9  # adam, yogi, adagrad: momentum of the mean delta
    beta2: float = 0.99  # adam, yogi: decay of its second moment
    tau: float = 1e-3  # adam, yogi, adagrad: adaptivity (v starts at tau²)
    min_successful_clients: int = 1  # a round stands only with this many accepted updates
    max_failed_rounds: int = 3  # consecutive rounds that do not stand before the run stops
    straggler_factor: float = 2.0  # deployment: once half the cohort answered in t s, the rest get max(straggler_min_s, factor · t) s more; 0: off
    straggler_min_s: float = 10.0  # deployment: the stragglers' extra time is at least this
    round_timeout_s: float | None = None  # deadline of a round; unset: none in simulation, 600 s under `cohort server`; 0: none
    over_selection: float = 0.0  # sample this share more clients than a round needs and close it when enough reported
    aggregator: str = "mean"  # mean | median | trimmed_mean | krum (the model group's combine)
    trim_fraction: float = 0.1  # trimmed_mean: the share cut from each end of every coordinate
    krum_byzantine: int = 1  # krum: f, the attackers tolerated (needs clients per round >= 2f + 3)
    krum_select: int = 1  # krum: m, the best-scored updates averaged (1: Krum; more: Multi-Krum)
    norm_bound: float | str = "auto"  # "auto": every update within norm_bound_multiplier × the median norm of recent ones (and its weight likewise); a number: a fixed L2 bound; 0: off (the run says so)
    norm_bound_multiplier: float = 4.0  # auto: how many times the recent updates' median norm an update may reach
    weight_bound_multiplier: float = 10.0  # auto: how many times their median weight (claimed examples) it may carry

    def server_optimizer(self):
        """The model's server optimizer for ``optimizer`` other than sgd (None: the algorithm's own SGD)."""
        if self.optimizer == "sgd":
            return None
        from cohort.aggregation.server_opt import adaptive

        return adaptive(self.optimizer, self.lr, self.beta1, self.beta2, self.tau)

    def stragglers(self):
        """How a deployed round stops waiting for its stragglers (cohort.channel.stragglers)."""
        from cohort.channel.stragglers import StragglerRule

        return StragglerRule(self.straggler_factor, self.straggler_min_s)

    def bound(self):
        """The adaptive update bound of ``norm_bound = "auto"`` (None otherwise)."""
        if self.norm_bound != "auto":
            return None
        from cohort.aggregation.bound import adaptive_bound

        return adaptive_bound(self.norm_bound_multiplier, self.weight_bound_multiplier)

    def combine(self):
        """The model group's combine for ``aggregator`` (None: the weighted mean)."""
        from cohort.aggregation import robust

        if self.aggregator == "median":
            return robust.coordinate_median()
        if self.aggregator == "trimmed_mean":
            return robust.trimmed_mean(self.trim_fraction)
        if self.aggregator == "krum":
            return robust.krum(self.krum_byzantine, self.krum_select)
        return None

    def __post_init__(self) -> None:
        _check(self.algorithm in ALGORITHMS, "server.algorithm", self.algorithm, f"one of {', '.join(ALGORITHMS)}")
        _check(self.policy in POLICIES, "server.policy", self.policy, f"one of {', '.join(POLICIES)}")
        check_sampling(self.fraction, self.min_clients, self.over_selection)
        _check(0 < self.lr <= MAX_LR, "server.lr", self.lr, f"a number in (0, {MAX_LR:g}] (larger rates overflow)")
        _check(0 <= self.momentum < 1, "server.momentum", self.momentum, "0 <= momentum < 1")
        _check(self.min_successful_clients >= 1, "server.min_successful_clients", self.min_successful_clients, "an integer >= 1")
        _check(self.max_failed_rounds >= 1, "server.max_failed_rounds", self.max_failed_rounds, "an integer >= 1")
        self.stragglers()  # checks both, naming their keys
        _check(self.round_timeout_s is None or 0 <= self.round_timeout_s <= MAX_TIMEOUT_S, "server.round_timeout_s",
               self.round_timeout_s, f"0 (no deadline) or a number of seconds up to {MAX_TIMEOUT_S:.0f}")
        _check(self.over_selection == 0 or self.policy not in POLICIES or POLICIES[self.policy].samples_rounds,
               "server.over_selection", self.over_selection, f"0 with server.policy = {self.policy!r} (over-selection "
               f"is for policies that sample each round's clients: {', '.join(n for n, k in POLICIES.items() if k.samples_rounds)})")
        _check(self.optimizer in ("sgd", "adam", "yogi", "adagrad"), "server.optimizer", self.optimizer,
               "one of sgd, adam, yogi, adagrad")
        _check(self.optimizer == "sgd" or self.momentum == 0, "server.momentum", self.momentum,
               "0 with an adaptive server.optimizer (its momentum is server.beta1)")
        if self.optimizer != "sgd":
            self.server_optimizer()  # checks beta1, beta2 and tau, naming their keys
        _check(self.aggregator in AGGREGATORS, "server.aggregator", self.aggregator, f"one of {', '.join(AGGREGATORS)}")
        _check(self.norm_bound == "auto" or (not isinstance(self.norm_bound, str) and 0 <= self.norm_bound < math.inf),
               "server.norm_bound", self.norm_bound,
               "\"auto\" (the default: bounded by the recent updates' median), a finite number > 0 (a fixed L2 bound) "
               "or 0 (off)")
        self.bound()  # checks the multipliers, naming their keys
        self.combine()  # checks the aggregator's own settings, naming their keys


AGGREGATORS = ("mean", "median", "trimmed_mean", "krum")


@dataclass(frozen=True)
class EvaluateConfig:
    every: int = 1  # evaluate every k rounds, and after the last
    centralized: bool = True  # on the server's test set
    federated_fraction: float | None = None  # fraction of clients evaluated on their held-out data; unset: 1 for natural partitions, else 0
    target_metric: str = "accuracy"  # metric of the round record the target applies to
    target: float | None = None  # stop once target_metric reaches this (losses: falls to this)
    initial: bool = False  # also evaluate the initial model, as round 0
    threads: int | None = None  # torch threads of the server's own evaluation; unset: simulation.threads, as the clients

    def __post_init__(self) -> None:
        _check(self.every >= 1, "evaluate.every", self.every, "an integer >= 1")
        _check(self.threads is None or 0 <= self.threads <= 1024, "evaluate.threads", self.threads,
               "an integer from 0 (torch's default) to 1024, or unset (simulation.threads)")
        _check(self.federated_fraction is None or 0 <= self.federated_fraction <= 1, "evaluate.federated_fraction",
               self.federated_fraction, "0 <= fraction <= 1")
        _check(self.target is None or math.isfinite(self.target), "evaluate.target", self.target, "a finite number")

    @property
    def target_mode(self) -> str:
        return "min" if self.target_metric.endswith("loss") else "max"


@dataclass(frozen=True)
class SimulationConfig:
    backend: str = "inprocess"  # inprocess | processes | vectorized (many small-model clients at once, torch.func) | ray (cohort[ray])
    workers: int = 0  # processes: worker count; 0: one per core (ray: actors; 0: one per CPU of the cluster)
    ray_address: str = ""  # ray: "" starts Ray here; "auto" joins this machine's cluster; "ray://HEAD:10001" a remote one
    threads: int = 1  # torch threads per client; equal counts give bit-identical runs across backends
    speed_spread: float = 1.0  # virtual clock: client speeds spread log-uniformly over [1, spread]
    client_state_mb: int = 1024  # per-client state (SCAFFOLD's cᵢ) kept in memory; more spills to disk

    def __post_init__(self) -> None:
        _check(self.backend in BACKENDS, "simulation.backend", self.backend, f"one of {', '.join(BACKENDS)}")
        _check(0 <= self.workers <= 1024, "simulation.workers", self.workers, "an integer from 0 (one per core) to 1024")
        for name, backend in BACKENDS.items():  # a backend's own keys are left at their defaults under another
            for key in backend.own if name != self.backend else ():
                _check(getattr(self, key) == getattr(SimulationConfig, key), f"simulation.{key}", getattr(self, key),
                       f"set only with simulation.backend = {name!r}")
        if BACKENDS[self.backend].check is not None:
            BACKENDS[self.backend].check(self)
        _check(0 <= self.threads <= 1024, "simulation.threads", self.threads, "an integer from 0 (torch's default) to 1024")
        _check(1 <= self.speed_spread < math.inf, "simulation.speed_spread", self.speed_spread, "a finite number >= 1")
        _check(0 <= self.client_state_mb <= 2**30, "simulation.client_state_mb", self.client_state_mb, "an integer >= 0")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"  # each run writes a new folder in here
    progress: bool = True  # a live progress bar over rounds
    checkpoint: bool = True  # write the whole server state after every round (cohort run --resume)
    trackers: tuple[str, ...] = ()  # also log to: tensorboard | mlflow (a local store) | wandb (offline), in the run folder

    def __post_init__(self) -> None:
        bad = [t for t in self.trackers if t not in ("tensorboard", "mlflow", "wandb")]
        _check(not bad, "output.trackers", list(self.trackers), "a list of tensorboard, mlflow, wandb")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # names the run folder
    seed: int = 0  # every random stream of the run derives from it
    rounds: int = 20  # round limit
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: TrainSettings = field(default_factory=TrainSettings)
    server: ServerConfig = field(default_factory=ServerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    app: dict[str, Any] = field(default_factory=dict)  # your app's own settings, free-form (cohort run --app): context.settings
    # the components' own sections ([fedprox], [fedbuff], ...: cohort.core.sections), each read as config.<name>;
    # in the TOML they are top-level tables like the rest
    sections: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = [n for n in self.sections if n not in SECTIONS]
        if unknown:
            raise ConfigError(f"unknown config section [{unknown[0]}]; registered sections: {', '.join(SECTIONS)}")
        full = {}
        for name, section in SECTIONS.items():
            value = self.sections.get(name, None)
            if value is not None and not isinstance(value, section.settings):
                raise ConfigError(f"[{name}] is a {type(value).__name__}; expected {section.settings.__name__}")
            full[name] = value if value is not None else section.settings()
        object.__setattr__(self, "sections", full)  # every registered section, at its defaults unless given
        _check(1 <= self.rounds <= MAX_ROUNDS, "rounds", self.rounds, f"an integer from 1 to {MAX_ROUNDS}")
        _check(0 <= self.seed <= MAX_SEED, "seed", self.seed, "an integer from 0 to 2**63 - 1")
        _check(is_plain_name(self.name), "name", self.name,
               "a plain folder name (letters, digits, spaces, '.', '_', '-'; not starting with '.'; at most 100 characters)")
        if self.secagg.mode != "none" and self.privacy.mode == "central" and self.privacy.adaptive_clip:
            raise ConfigError("privacy.adaptive_clip cannot run with secure aggregation: it counts the updates the server "
                              "clipped, and under secure aggregation the server never sees one. Set a fixed privacy.clip")

    def __getattr__(self, name: str) -> Any:  # config.fedprox: a registered section
        sections = self.__dict__.get("sections")  # (absent while unpickling)
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def chosen(self, key: str) -> Any:
        """The section of the component that setting ``key`` picks (``"server.algorithm"``: ``[fedprox]`` when
        it is "fedprox"), or None when that component has no section of its own."""
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        section = SECTIONS.get(node)
        return self.sections[node] if section is not None and section.chosen_by == key else None

    @property
    def federated_fraction(self) -> float:
        """The share of clients evaluated on their held-out data each evaluation: unset, all of them with a
        natural partition (each site is scored), none otherwise."""
        f = self.evaluate.federated_fraction
        if f is not None:
            return f
        if self.data.dataset == "synthetic":  # a generated population may be huge: score about 1,000 of them
            return min(1.0, 1000 / self.data.num_clients)
        return 1.0 if self.data.natural else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; unset (None) values are left out, as TOML has no null."""
        d = asdict(self)
        d.update(d.pop("sections"))  # the components' sections are top-level tables
        return _drop_none(d)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


def is_plain_name(name: str) -> bool:
    """A name safe as one folder name: it cannot climb out of ``output.dir`` or hide."""
    return (isinstance(name, str) and 0 < len(name) <= 100 and not name.startswith((".", " ")) and not name.endswith(" ")
            and all(c.isalnum() or c in "._- " for c in name))


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                defaults: Mapping[str, Any] | None = None) -> RunConfig:
    """The config in ``path`` (None: the embedded demo, or with ``defaults`` no file at all) with
    ``key=value`` overrides applied. ``defaults`` (an app's own, as a nested table) lie under the file."""
    if path is None and defaults is not None:
        text, source = "", "the app's settings"
    elif path is None:
        text, source = resources.files("cohort").joinpath("demo.toml").read_text(), "the embedded demo"
    else:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a folder; give the path of a TOML file inside it (see examples/)")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; give the path of a TOML file (see examples/)")
        try:
            text, source = p.read_text(encoding="utf-8"), str(p)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {str(p)!r} cannot be read as UTF-8 TOML text: {e}") from e
    text = text.removeprefix("\ufeff")  # a byte-order mark, as some Windows editors write: not TOML, but harmless
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from e
    if defaults is not None:
        data = _merged(plain(dict(defaults), "the app's config"), data)
    for item in overrides:
        _apply_override(data, item)
    return from_dict(data)


def _merged(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """``above`` over ``below``, table by table."""
    out = dict(below)
    for k, v in above.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(data: dict[str, Any]) -> RunConfig:
    return build(RunConfig, data, "", {name: s.settings for name, s in SECTIONS.items()})


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set server.fraction=0.1")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word is a string: --set data.partition=shards
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
    node[last] = value


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

