"""A site in a deployment: a client process that reads only its own rows (``cohort client --data FILE``).

The site answers the statistics exchange (:mod:`cohort.data.exchange`) from its training rows, then
trains and evaluates with the framework's own client over its rows prepared as the federation agreed
(the ``site`` record of every message's config). Its rows, held-out share and preprocessing are those
the simulation gives the same client id, so a deployed federation of sites reproduces the simulation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cohort import frameworks
from cohort.core.errors import ConfigError, DataError
from cohort.core.records import SITE, record
from cohort.core.tasks import register_task
from cohort.core.types import Config, EvaluateResult, Message, Reply
from cohort.data import ArrayDataset, Partition
from cohort.data import exchange as X
from cohort.data import features as F
from cohort.data.sites import _assigned, _holdout, holdout_counts, own_preprocessing, spec_of, split_marks
from cohort.data.table import Table, expand_files, read_table

NATURAL_CSV = ("files", "column", "assigned")


def is_site_federation(config) -> bool:
    """A deployment of this config has sites that hold their own rows and a server that holds none."""
    return config.data.dataset == "csv" and config.data.partition in NATURAL_CSV


def site_count(cfg, announced: int | None = None) -> tuple[int, str]:
    """How many sites a server of ``cfg`` (a DataConfig) waits for, and a line that says why: one per
    file of ``data.client_files``; patterns there are expanded on the server's machine, and when they
    match nothing here (the sites' files are theirs) the server takes ``announced`` (its --min-clients)
    sites, whose names come with their schemas. Other partitions: ``data.num_clients``."""
    import glob

    if cfg.partition != "files":
        return cfg.num_clients, f"{cfg.num_clients} sites (data.num_clients)"
    patterns = [p for p in cfg.client_files if glob.has_magic(p)]
    if not patterns:
        return len(cfg.client_files), f"{len(cfg.client_files)} sites, one per file of data.client_files"
    try:
        files = expand_files(cfg.client_files)
    except DataError as e:
        if announced is not None:
            return announced, (f"{announced} sites (--min-clients): data.client_files {patterns} matches no file here "
                               f"({str(e).removeprefix('data.client_files: ')}), so the sites name themselves")
        raise ConfigError(f"data.client_files has the pattern(s) {patterns}, which match no file on this machine "
                          f"({str(e).removeprefix('data.client_files: ')}), so the server cannot count the sites: "
                          "start it with --min-clients N (the number of sites; each names itself when it connects), "
                          "or list the sites' files in data.client_files") from None
    if announced is not None and announced != len(files):
        raise ConfigError(f"--min-clients is {announced} but data.client_files matches {len(files)} files here "
                          f"({', '.join(f.stem for f in files)}); give the number of sites, or leave --min-clients out")
    return len(files), (f"{len(files)} sites: data.client_files {patterns} matches {', '.join(f.stem for f in files)} "
                        "here")


def site_table(cfg, client_id: int, data_file: str | None = None) -> tuple[Table, str]:
    """Client ``client_id``'s own rows and name: from ``data_file`` (its own file) when given, else from
    the config's files as the simulation splits them."""
    delimiter, columns = cfg.csv_delimiter, cfg.csv_columns
    if cfg.partition == "files":
        if data_file:
            path = Path(data_file)
        else:
            try:
                files = expand_files(cfg.client_files)
            except DataError as e:  # the config's files are the simulation's, not this machine's
                reason = str(e).removeprefix("data.client_files: ")
                raise DataError(f"this site was started without --data, so it looked for its rows among the config's "
                                f"data.client_files, as a simulation does ({reason}). A deployed site reads its own "
                                f"file: start it with cohort client --config CONFIG.toml --id {client_id} --data FILE") from None
            if not 0 <= client_id < len(files):
                raise ConfigError(f"--id is {client_id}; data.client_files names {len(files)} files (ids 0 to "
                                  f"{len(files) - 1}); give this site's own file with --data")
            path = files[client_id]
        if not path.is_file():
            raise DataError(f"{str(path)!r} is not a file: give this site's own CSV file with --data FILE")
        return read_table(path, columns, delimiter), path.stem
    table = read_table(data_file or cfg.csv_path, columns, delimiter)
    if cfg.partition == "column":
        values = [v.strip() for v in table.column(cfg.partition_column)]
        names = sorted(set(values))
        if data_file and len(names) == 1:  # the site's own file: its rows are all its own
            return table, names[0]
        if not 0 <= client_id < len(names):
            raise ConfigError(f"--id is {client_id}; column {cfg.partition_column!r} of {table.source} has "
                              f"{len(names)} sites (ids 0 to {len(names) - 1})")
        keep = [i for i, v in enumerate(values) if v == names[client_id]]
        name = names[client_id]
    else:  # assigned
        client_of, names = _assigned(Path(cfg.partition_file), len(table.rows))
        if not 0 <= client_id < len(names):
            raise ConfigError(f"--id is {client_id}; {cfg.partition_file} assigns {len(names)} clients")
        keep = np.flatnonzero(client_of == client_id).tolist()
        name = names[client_id]
    return Table(table.source, table.columns, [table.rows[i] for i in keep], [table.lines[i] for i in keep]), name


class SiteClient:
    """The trainer of one site: it answers the exchange, and trains and evaluates through the
    framework's client over its rows as the federation agreed to prepare them."""

    def __init__(self, config, client_id: int, data_file: str | None = None) -> None:
        if config.attack.kind != "none":
            raise ConfigError("attack.kind simulates attackers; a deployed site does not: set attack.kind = 'none'")
        self.config, self.client_id = config, client_id
        self.table, self.name = site_table(config.data, client_id, data_file)
        if not self.table.rows:
            raise DataError(f"site {self.name!r} (client {client_id}) has no rows")
        self.framework = frameworks.get(config.model.framework)
        self._encoded: tuple | None = None  # (key, encoded, train rows, held rows)
        self._trainer: tuple | None = None  # (key, trainer)

    def __call__(self, client_id: int) -> "SiteClient":  # the client_fn of this process
        if client_id != self.client_id:
            raise ConfigError(f"this process holds site {self.name!r}, client {self.client_id}; asked for {client_id}")
        return self

    # --- the exchange ------------------------------------------------------------------------
    def answer(self, message: Message, secure: bool = False) -> Reply:
        """This site's part of the exchange. ``secure``: the request came through a secure aggregation
        round (its answer is masked); with ``secagg.mode`` on, the site gives its statistics no other way."""
        cfg = self.config.data
        if (self.config.secagg.mode != "none" and not secure
                and message.task not in ("data_schema", "data_categories")):
            raise ConfigError(f"this site's config has secagg.mode = {self.config.secagg.mode!r}: its statistics "
                              f"leave it only masked, in a secure aggregation round; {message.task!r} came in the clear")
        if message.task == "data_schema":
            schema = {"name": self.name, "columns": self.table.columns, "labels": X.distinct_targets(self.table, cfg),
                      "kinds": F.category_kinds(self.table, spec_of(cfg))}
            return Reply({X.GROUP: {"schema": X.to_json_bytes(schema)}}, len(self.table.rows))
        site = record(message.config, SITE)
        columns, labels = site.get("columns"), site.get("labels")
        enc, train, held = self._encode(columns, labels)
        F.refuse_missing(enc, cfg.impute)  # as the simulation does
        if message.task == "data_categories" or "clients" in site:  # under secure aggregation
            from cohort.data.exchange_secure import site_answer

            return site_answer(message.task, enc, train, held, message.config)
        if message.task == "data_statistics":
            stats = F.client_statistics(enc.numeric[train], F.rows_of(enc.categorical, train))
            return X.statistics_reply(stats, len(train), len(held))
        if message.task == "data_histogram":
            return X.histogram_reply(enc.numeric[train], message.config)
        raise ConfigError(f"task {message.task!r} is not part of the data exchange ({', '.join(X.TASKS)})")

    def _encode(self, columns, labels):
        key = json.dumps([columns, labels])
        if self._encoded is None or self._encoded[0] != key:
            if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
                raise DataError("the server sent no agreed column order (the site record's columns)")
            cfg = self.config.data
            table = X.reorder(self.table, columns)
            enc = F.encode([table], spec_of(cfg), labels)
            counts = holdout_counts(cfg, [self.name], [len(enc.y)], every_site=False)
            marked = split_marks(cfg, [table], enc.where)
            train, held = _holdout([np.arange(len(enc.y))], enc.y, cfg.holdout, self.config.seed, cfg.csv_task,
                                   ids=[self.client_id], counts=counts, marked=None if marked is None else [marked],
                                   names=[self.name])
            if len(train[0]) == 0:
                raise DataError(f"site {self.name!r} keeps no training rows (it has {len(enc.y)}); it needs 2 or more")
            self._encoded = (key, enc, train[0], held[0])
        return self._encoded[1:]

    # --- training, through the framework's client --------------------------------------------
    def _inner(self, config: Config):
        d = record(config, SITE).get(X.AGREEMENT)
        if d is None:
            raise DataError(f"site {self.name!r} has not received how to prepare its rows (the site record's "
                            f"{X.AGREEMENT!r}); the server "
                            "sends it after the data exchange")
        key = json.dumps(d, sort_keys=True)
        if self._trainer is not None and self._trainer[0] == key:
            return self._trainer[1]
        columns, labels, num_classes, prep, local = X.read_agreement(d)
        cfg = self.config.data
        enc, train, held = self._encode(columns, labels)
        F.refuse_missing(enc, cfg.impute)
        if local:
            stats = F.client_statistics(enc.numeric[train], F.rows_of(enc.categorical, train))
            prep = own_preprocessing(enc.numeric[train], stats, cfg, prep.categories)
        if len(prep.fill) != enc.numeric.shape[1]:
            raise DataError(f"the federation prepares {len(prep.fill)} numeric columns; site {self.name!r} has "
                            f"{enc.numeric.shape[1]}")
        x = F.transform(enc.numeric, enc.categorical, np.arange(len(enc.y)), prep)
        data = ArrayDataset(x, enc.y, cfg.csv_task, num_classes, name=self.name)
        model = self.config.model
        factory = frameworks.Factory(model.factory, tuple(data.feature_shape), num_classes or 1) if model.factory else None
        model_fn = self.framework.build_model(model.name, factory, tuple(data.feature_shape), num_classes or 1, data)
        trainer = self.framework.client_fn(model_fn, data, _only(self.client_id, train),
                                           _only(self.client_id, held) if cfg.holds_out else None,
                                           self.config.client, self.config.seed)(self.client_id)
        self._trainer = (key, trainer)
        return trainer

    def train(self, arrays, config: Config, hooks):
        return self._inner(config).train(arrays, config, hooks)

    def gradient(self, arrays, config: Config):
        return self._inner(config).gradient(arrays, config)

    def evaluate(self, arrays, config: Config) -> EvaluateResult:
        return self._inner(config).evaluate(arrays, config)


def _only(client_id: int, rows: np.ndarray) -> Partition:
    """A partition in which client ``client_id`` owns ``rows`` and the clients before it nothing."""
    offsets = np.zeros(client_id + 2, np.int64)
    offsets[-1] = len(rows)
    return Partition(np.asarray(rows, np.int64), offsets)


@register_task(*X.TASKS)
def answer(half, message: Message, trainer, state, account, under=None):
    """A deployment's data agreement before round 1 (:mod:`cohort.data.exchange`): the site's part,
    computed by the client that holds its rows. ``under`` = "secagg": the answer will be masked."""
    site_answer = getattr(trainer, "answer", None)
    if site_answer is None:
        raise ConfigError(f"task {message.task!r} asks for this site's data statistics; this client holds no "
                          "site data (start it as `cohort client --config CONFIG.toml --id ID --data FILE`)")
    return (site_answer(message, secure=True) if under == "secagg" else site_answer(message)), state
