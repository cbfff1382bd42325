"""A site's policy: what the site's operator lets the federation ask of it, enforced by the site.

The operator writes a TOML file (``cohort client --policy site.toml``) of four tables:

- ``[accept]``: the kinds of task the site answers (``train``, ``evaluate``, ``statistics``), the
  algorithms it trains with, and the ``--app`` modules (and ``model.factory`` modules) it may import;
- ``[require]``: secure aggregation, a least central or local DP noise, a largest norm clip;
- ``[limits]``: training rounds and tasks per UTC day, and the largest model it receives;
- ``[disclose]``: the columns whose statistics may leave, and which per-site metrics may: ``all``,
  ``aggregates`` (only inside a secure sum) or ``none``.

Two checks use it. :func:`refusals` holds a run's *declaration* (what the server says it will do,
:func:`declaration`) against the rules: the client runs it on the server's welcome, and the server on
every connected site's policy before round 1, so a config no site accepts fails there, naming the site
and the rule. :class:`Gate` runs in the site's own client process on every task, before anything is
computed, on what the task itself shows (its name, its protocol, its arrays, the columns it asks
about), whatever the server declared: a task it refuses is answered with a refusal that carries the
rule, and the day's counts are kept in a file so a restart does not reset them. What a site cannot
see from a task, it cannot enforce: central DP is added by the server, so ``central_noise_multiplier``
and ``max_clip`` hold the server to its declaration (and a server that lies is caught only by the
audit trail). Secure aggregation, the task kinds, the algorithm, the caps, the model's size, the
columns and the metrics are the site's own to enforce.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cohort.core.errors import ConfigError
from cohort.core.records import SITE
from cohort.core.tables import build

TASK_KINDS = ("train", "evaluate", "statistics")
METRICS = ("all", "aggregates", "none")
ANY = "*"
SECURE = "secagg"  # the protocol whose tasks the server sees only as sums (core/tasks: "secagg:fit")
KEY_STAGES = ("secagg_advertise", "secagg_share", "secagg_unmask")  # keys and shares: no data of the site
NAMES_ONLY = ("data_schema",)  # column names, kinds and label values: a schema, no statistic
IN_THE_CLEAR = ("data_categories",)  # the category values of each column: in the clear in a secure exchange too


@dataclass(frozen=True)
class Accept:
    """``[accept]``: what the site answers."""

    tasks: tuple[str, ...] = TASK_KINDS  # kinds of task it answers: train (fit, and its secure aggregation), evaluate, statistics (a site federation's data agreement)
    algorithms: tuple[str, ...] = (ANY,)  # algorithms it trains with, e.g. ["fedavg", "fedprox"]; ["*"]: any
    apps: tuple[str, ...] = ()  # modules it may import for --app or model.factory ("module" or "module:attribute"); []: built-ins only

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASK_KINDS]
        if unknown:
            raise ConfigError(f"accept.tasks names {unknown}; the kinds of task are {', '.join(TASK_KINDS)}")
        if not self.algorithms:
            raise ConfigError('accept.algorithms is empty; list the algorithms this site trains with, or ["*"] for any')


@dataclass(frozen=True)
class Require:
    """``[require]``: the protections a run must have."""

    secagg: bool = False  # training and statistics leave the site only inside secure aggregation: the server sees sums
    secagg_min_sites: int = 3  # with secagg: a secure round must need at least this many sites to unmask (its threshold) and mask with at least this many (this site and its neighbours)
    central_noise_multiplier: float = 0.0  # the run must declare central DP (privacy.mode = "central") with at least this noise; 0: not required
    local_noise_multiplier: float = 0.0  # this site's own DP (client.ldp or client.dp_sgd in its config) must add at least this noise; 0: not required
    max_clip: float = 0.0  # the run must clip every update to at most this L2 norm (privacy.clip under central DP); 0: not required

    def __post_init__(self) -> None:
        if not 2 <= self.secagg_min_sites <= 10**6:
            raise ConfigError(f"require.secagg_min_sites is {self.secagg_min_sites!r}; expected an integer from 2 (a sum "
                              "of two sites tells each the other's) to 1e6")
        for key in ("central_noise_multiplier", "local_noise_multiplier", "max_clip"):
            v = getattr(self, key)
            if not (math.isfinite(v) and 0 <= v <= 1e6):
                raise ConfigError(f"require.{key} is {v!r}; expected a number from 0 (not required) to 1e6")


@dataclass(frozen=True)
class Limits:
    """``[limits]``: how much the site gives."""

    rounds_per_day: int = 0  # training rounds answered per UTC day; 0: no limit
    tasks_per_day: int = 0  # tasks of any kind answered per UTC day; 0: no limit
    max_parameters: int = 0  # the largest model it receives, in numbers (parameters); 0: no limit
    usage_file: str = ""  # where the day's counts are kept across restarts; "": NAME.usage.json beside the policy

    def __post_init__(self) -> None:
        for key in ("rounds_per_day", "tasks_per_day", "max_parameters"):
            v = getattr(self, key)
            if not 0 <= v <= 10**12:
                raise ConfigError(f"limits.{key} is {v!r}; expected an integer from 0 (no limit) to 10**12")


@dataclass(frozen=True)
class Disclose:
    """``[disclose]``: what may leave the site beside the model's update."""

    columns: tuple[str, ...] = (ANY,)  # columns whose statistics may leave (a site federation's data agreement); ["*"]: all
    metrics: str = "all"  # per-site metrics that leave: all | aggregates (only inside a secure sum) | none

    def __post_init__(self) -> None:
        if self.metrics not in METRICS:
            raise ConfigError(f"disclose.metrics is {self.metrics!r}; expected one of {', '.join(METRICS)}")


@dataclass(frozen=True)
class SitePolicy:
    """A site's policy (see the module's docstring); every table is optional."""

    accept: Accept = field(default_factory=Accept)
    require: Require = field(default_factory=Require)
    limits: Limits = field(default_factory=Limits)
    disclose: Disclose = field(default_factory=Disclose)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the site's policy") -> "SitePolicy":
        try:
            return build(cls, data, "")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def load_policy(path: str | Path) -> SitePolicy:
    """The policy in the TOML file ``path``, checked: an unknown key or a wrong value names itself."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--policy {str(path)!r} does not exist; give the site's policy file (TOML)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--policy {str(path)!r} cannot be read: {e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--policy {str(path)!r} is not valid TOML: {e}") from e
    return SitePolicy.from_dict(data, f"--policy {str(path)!r}")


# ---------------------------------------------------------------------------------------- the run's declaration

def declaration(*, algorithm: str, secagg: str, central_noise_multiplier: float, clip: float,
                tasks: tuple[str, ...], rounds: int) -> dict[str, Any]:
    """What a server says its run will do, sent in its welcome and held against each site's policy.
    ``central_noise_multiplier`` and ``clip`` are 0 without central DP; ``tasks`` are the kinds of task
    it will ask."""
    return {"algorithm": algorithm, "secagg": secagg, "central_noise_multiplier": float(central_noise_multiplier),
            "clip": float(clip), "tasks": sorted(tasks), "rounds": int(rounds)}


def refusals(policy: SitePolicy, run: Mapping[str, Any]) -> list[str]:
    """Each rule of ``policy`` that the declared ``run`` breaks, as ``"[table] key: why"``; [] if it accepts."""
    out = []
    a, r, d = policy.accept, policy.require, policy.disclose
    algorithm = run.get("algorithm", "")
    if ANY not in a.algorithms and algorithm not in a.algorithms:
        out.append(f"[accept] algorithms: the run trains with {algorithm!r}; this site accepts {list(a.algorithms)}")
    for kind in run.get("tasks", ()):
        if kind not in a.tasks:
            out.append(f"[accept] tasks: the run asks {kind} tasks; this site answers {list(a.tasks)}")
    secure = run.get("secagg", "none") != "none"
    if r.secagg and not secure:
        out.append("[require] secagg: the run has secagg.mode = 'none'; this site sends its updates only inside "
                   "secure aggregation")
    noise = float(run.get("central_noise_multiplier", 0.0))
    if r.central_noise_multiplier and noise < r.central_noise_multiplier:
        what = f"central DP with noise multiplier {noise:g}" if noise else "no central DP"
        out.append(f"[require] central_noise_multiplier: the run declares {what}; this site requires at least "
                   f"{r.central_noise_multiplier:g} (privacy.mode = 'central', privacy.noise_multiplier)")
    clip = float(run.get("clip", 0.0))
    if r.max_clip and not 0 < clip <= r.max_clip:
        what = f"clips updates to {clip:g}" if clip else "clips no update"
        out.append(f"[require] max_clip: the run {what}; this site requires a clip of at most {r.max_clip:g} "
                   "(privacy.clip under central DP)")
    if "evaluate" in run.get("tasks", ()) and d.metrics != "all" and not secure:
        out.append(f"[disclose] metrics: the run scores the model at the sites in the clear (evaluate tasks); this "
                   f"site lets {'no per-site metric' if d.metrics == 'none' else 'metrics only inside a secure sum'} "
                   "leave (set evaluate.federated_fraction = 0, or run with secure aggregation)")
    return out


# ---------------------------------------------------------------------------------------- the site's gate

def _too_small(config: Mapping[str, Any], least: int) -> str | None:
    """Why a secure round's advertisement (its ``secagg`` record: this site's threshold and neighbours) lets
    the server unmask fewer than ``least`` sites together, or None."""
    from cohort.core.records import SECAGG

    record = config.get(SECAGG) if isinstance(config, Mapping) else None
    if not isinstance(record, Mapping):
        return "the secure round came without its record (threshold, neighbours)"
    t, neighbours = record.get("threshold"), record.get("neighbours")
    if not isinstance(t, int) or isinstance(t, bool) or t < least:
        return f"the server set the secure round's threshold to {t!r}; this site takes part when at least {least} sites " \
               "must join to unmask"
    if neighbours is not None and (not isinstance(neighbours, list) or len(set(neighbours) | {record.get("id")}) < least):
        return f"the server gave this site {len(neighbours) if isinstance(neighbours, list) else neighbours!r} " \
               f"neighbours; this site masks with at least {least - 1} others"
    return None


def task_kind(task: str) -> str | None:
    """The kind a task name is (train, evaluate, statistics), or None for a secure-aggregation key stage."""
    inner = task.rpartition(":")[2]
    if inner in KEY_STAGES:
        return None
    if inner == "evaluate":
        return "evaluate"
    if inner.startswith("data_"):
        return "statistics"
    return "train"  # the algorithm's own tasks ("fit", ...)


def count_parameters(arrays: Any) -> int:
    """The numbers in a task's arrays ({group: {name: array}} or {name: array})."""
    if not isinstance(arrays, Mapping):
        return 0
    total = 0
    for v in arrays.values():
        total += count_parameters(v) if isinstance(v, Mapping) else int(getattr(v, "size", 0))
    return total


class Gate:
    """A site's policy at work in its client process: :meth:`admit` before a task runs, :meth:`release`
    on what goes back. ``usage``: the file of the day's counts (None: kept in memory only, for tests);
    ``clock``: seconds since the epoch (UTC days are counted from it)."""

    def __init__(self, policy: SitePolicy, source: str = "", usage: Path | None = None,
                 clock: Callable[[], float] | None = None,
                 check_algorithm: Callable[[str, Mapping[str, Any]], str | None] | None = None) -> None:
        import time

        self.policy, self.source, self.usage = policy, source, usage
        self.clock = clock or time.time
        self.check_algorithm = check_algorithm  # the site's own checks of the algorithm the server runs (its DP)
        self.run: Mapping[str, Any] | None = None  # the server's declaration, from its welcome
        self.algorithm = ""
        self.broken: list[str] = []  # the rules the server's run breaks: every task is refused with the first
        self.counts = self._read()

    def welcome(self, algorithm: str, run: Mapping[str, Any] | None, settings: Mapping[str, Any] | None = None) -> list[str]:
        """The server's algorithm (and its settings) and declaration; returns the rules they break (each
        task will then be refused)."""
        self.algorithm, self.run = algorithm, dict(run or {})
        self.broken = refusals(self.policy, {**self.run, "algorithm": algorithm})
        why = self.check_algorithm(algorithm, settings or {}) if self.check_algorithm is not None else None
        if why:
            self.broken.append(f"[require] local_noise_multiplier: {why}")
        return list(self.broken)

    def admit(self, task: str, arrays: Any, config: Mapping[str, Any]) -> str | None:
        """Why this site refuses ``task`` (a reason naming the rule), or None: it runs, and is counted."""
        reason = self._why_not(task, arrays, config)
        if reason is not None:
            return f"refused by the site's policy{f' ({self.source})' if self.source else ''}: {reason}"
        return None

    def _why_not(self, task: str, arrays: Any, config: Mapping[str, Any]) -> str | None:
        p = self.policy
        if self.broken:
            return self.broken[0]
        kind = task_kind(task)
        protocol = task.partition(":")[0] if ":" in task else ""
        inner = task.rpartition(":")[2]
        if kind is not None and kind not in p.accept.tasks:
            return f"[accept] tasks: {task!r} is a {kind} task; this site answers {list(p.accept.tasks)}"
        if kind == "train" and ANY not in p.accept.algorithms and self.algorithm not in p.accept.algorithms:
            return f"[accept] algorithms: the server runs {self.algorithm!r}; this site accepts {list(p.accept.algorithms)}"
        if (p.require.secagg and kind in ("train", "statistics") and protocol != SECURE
                and inner not in NAMES_ONLY + IN_THE_CLEAR):
            return f"[require] secagg: {task!r} would send this site's {kind} result in the clear; it sends them only " \
                   "inside secure aggregation (a secagg: task)"
        if kind == "evaluate" and p.disclose.metrics != "all" and protocol != SECURE:
            return f"[disclose] metrics: {task!r} sends this site's scores in the clear; this site lets " \
                   f"{'no per-site metric' if p.disclose.metrics == 'none' else 'metrics only inside a secure sum'} leave"
        if p.require.secagg and inner == "secagg_advertise":  # a secure round the server made too small unmasks one site
            why = _too_small(config, p.require.secagg_min_sites)
            if why:
                return f"[require] secagg_min_sites: {why}"
        if kind == "statistics" and ANY not in p.disclose.columns and inner not in NAMES_ONLY:
            site = config.get(SITE) if isinstance(config, Mapping) else None
            columns = site.get("columns") if isinstance(site, Mapping) else None
            if not isinstance(columns, list):
                return f"[disclose] columns: {task!r} does not say which columns it summarises; this site summarises " \
                       f"only {list(p.disclose.columns)}"
            hidden = [c for c in columns if c not in p.disclose.columns]
            if hidden:
                return f"[disclose] columns: {task!r} summarises {hidden}, which this site does not disclose " \
                       f"(it discloses {list(p.disclose.columns)})"
        size = count_parameters(arrays)
        if p.limits.max_parameters and size > p.limits.max_parameters:
            return f"[limits] max_parameters: the model has {size:,} parameters; this site takes at most " \
                   f"{p.limits.max_parameters:,}"
        return self._count(kind, config)

    def _count(self, kind: str | None, config: Mapping[str, Any]) -> str | None:
        if self.usage is not None:  # another process of this site may have counted since
            self.counts = self._read()
        day = datetime.datetime.fromtimestamp(self.clock(), datetime.timezone.utc).date().isoformat()
        counts = self.counts if self.counts.get("day") == day else {"day": day, "tasks": 0, "rounds": []}
        limits = self.policy.limits
        if limits.tasks_per_day and counts["tasks"] >= limits.tasks_per_day:
            return f"[limits] tasks_per_day: this site has answered {counts['tasks']} tasks today ({day}, UTC), " \
                   f"its most; it answers again tomorrow"
        rnd = config.get("round") if isinstance(config, Mapping) else None
        if kind == "train" and limits.rounds_per_day and (not isinstance(rnd, int) or isinstance(rnd, bool)):
            return f"[limits] rounds_per_day: a training task without its round number ({rnd!r}) cannot be counted"
        # a round counts once however many tasks it takes (a retry, a secure round's stages); any other round
        # number (a new run's round 1 included) is another round
        new_round = kind == "train" and (not counts["rounds"] or counts["rounds"][-1] != str(rnd))
        if new_round and limits.rounds_per_day and len(counts["rounds"]) >= limits.rounds_per_day:
            return f"[limits] rounds_per_day: this site has trained {len(counts['rounds'])} rounds today ({day}, UTC), " \
                   f"its most; it trains again tomorrow"
        counts = {"day": day, "tasks": counts["tasks"] + 1,
                  "rounds": counts["rounds"] + ([str(rnd)] if new_round and limits.rounds_per_day else [])}
        try:
            self._write(counts)
        except OSError as e:  # a full disk: nothing is computed that the site could not count
            return f"[limits] usage_file: this site cannot record today's usage in {self.usage}: {e.strerror or e}"
        self.counts = counts
        return None

    def release(self, task: str, outcome: Any) -> Any:
        """``outcome`` as it may leave: per-site metrics dropped unless ``disclose.metrics`` lets them go
        (``aggregates``: only inside a secure sum). The update and its weight stay."""
        metrics = getattr(outcome, "metrics", None)
        if not metrics or task_kind(task) == "statistics":  # a statistics reply's row counts are its answer, not a score
            return outcome
        rule = self.policy.disclose.metrics
        if rule == "all" or (rule == "aggregates" and task.partition(":")[0] == SECURE and ":" in task):
            return outcome
        from dataclasses import replace

        return replace(outcome, metrics={})

    def _read(self) -> dict:
        if self.usage is None or not self.usage.exists():
            return {}
        try:
            data = json.loads(self.usage.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"the site's usage file {self.usage} cannot be read ({e}); it holds the day's counts "
                              "of [limits]: restore it, or delete it to start today's counts from zero") from e
        ok = (isinstance(data, dict) and isinstance(data.get("day"), str) and isinstance(data.get("tasks"), int)
              and isinstance(data.get("rounds"), list))
        if not ok:
            raise ConfigError(f"the site's usage file {self.usage} is not one this site wrote (expected day, tasks, "
                              "rounds); delete it to start today's counts from zero")
        return data

    def _write(self, counts: dict) -> None:
        if self.usage is None:
            return
        tmp = self.usage.with_name(f"{self.usage.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(counts, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.usage)


def usage_path(policy: SitePolicy, source: str | Path) -> Path:
    """Where the day's counts are kept: ``limits.usage_file``, or NAME.usage.json beside the policy file."""
    if policy.limits.usage_file:
        return Path(policy.limits.usage_file)
    source = Path(source)
    return source.with_name(source.stem + ".usage.json")


def app_allowed(policy: SitePolicy, spec: str) -> bool:
    """Whether ``spec`` (an ``--app`` or ``model.factory``: ``module:attribute`` or ``path.py:attribute``)
    is on the site's list: the whole spec, or its module, is listed."""
    module = spec.rpartition(":")[0] or spec
    return spec in policy.accept.apps or module in policy.accept.apps


def preflight(policies: Mapping[int, tuple[str, str]], run: Mapping[str, Any]) -> tuple[list[str], bool]:
    """The server's check before round 1 of the connected sites' policies (client id -> (name, policy as
    JSON, "" for none)) against its ``run`` declaration: a line per site that refuses (or whose policy
    the server cannot read), and whether every site refuses, so the run cannot start."""
    lines, refusing = [], 0
    for cid, (name, text) in sorted(policies.items()):
        if not text:
            continue
        who = f"{name or 'a site'} (client {cid})"
        try:
            policy = SitePolicy.from_dict(json.loads(text), f"the policy of {who}")
        except (ValueError, ConfigError) as e:  # the site still enforces its own: its tasks will say why
            lines.append(f"{who} sent a policy this server cannot read: {e}")
            continue
        broken = refusals(policy, run)
        if broken:
            refusing += 1
            lines.append(f"{who} refuses this run: " + "; ".join(broken))
    return lines, bool(policies) and refusing == len(policies)
