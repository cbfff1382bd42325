"""``[output] trackers``: a run's figures in the tools people already use, inside its run folder.

- ``"tensorboard"``: event files in ``tensorboard/`` (``tensorboard --logdir RUN_DIR/tensorboard``), written
  with tensorboard's own event writer: every round's scalars, each client's evaluation metrics under
  ``clients/<name>/``, and the config as text.
- ``"mlflow"``: a run in the local file store ``mlruns/`` (``mlflow ui --backend-store-uri RUN_DIR/mlruns``),
  the config as parameters, the scalars (and per-client ones as ``client.<name>.<metric>``) as metrics.
- ``"wandb"``: Weights & Biases in offline mode, in ``wandb/`` (``wandb sync`` uploads it later), the config
  as its config, the scalars and per-client metrics logged by round.

A tracker that fails (a full disk, a library error) is switched off with one warning; the run and its
metrics.jsonl go on.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cohort.core.errors import ConfigError

TRACKERS = {"tensorboard": ("tensorboard", "tracking"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def check_trackers(names: Sequence[str]) -> None:
    """Each tracker known and its library installed (ConfigError saying what to install otherwise)."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"output.trackers has {name!r}; expected some of {', '.join(TRACKERS)}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"output.trackers has {name!r}, which needs {module}: pip install 'cohort[{extra}]'")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in ("round", "version") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and abs(float(v)) < float("inf")}


def client_scalars(record: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Each evaluated client's held-out loss and metrics this round, by client name (``names[id]``, else the id)."""
    out: dict[str, dict[str, float]] = {}
    for row in record.get("clients") or ():
        if row.get("task") != "evaluate" or row.get("status") != "ok":
            continue
        values = {"loss": row.get("loss"), **(row.get("metrics") or {})}
        cid = row.get("client")
        name = names[cid] if names is not None and isinstance(cid, int) and 0 <= cid < len(names) else cid
        out[str(name)] = {k: float(v) for k, v in values.items()
                                                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


class TensorBoard:
    names: Sequence[str] | None = None  # the clients' names, set by Trackers

    def __init__(self, folder: Path, name: str, config: Mapping[str, Any], config_text: str) -> None:
        from tensorboard.compat.proto.summary_pb2 import SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(folder / "tensorboard"))
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        text = TensorProto(dtype=7, string_val=[config_text.encode("utf-8")], tensor_shape={})  # 7: DT_STRING
        self._add(0, [self._value("config", metadata=meta, tensor=text)])

    @staticmethod
    def _value(tag: str, **fields):
        from tensorboard.compat.proto.summary_pb2 import Summary

        return Summary.Value(tag=tag, **fields)

    def _add(self, step: int, values: list) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def log(self, record: Mapping[str, Any]) -> None:
        values = [self._value(k, simple_value=v) for k, v in scalars(record).items()]
        values += [self._value(f"clients/{name}/{k}", simple_value=v)
                   for name, m in client_scalars(record, self.names).items() for k, v in m.items()]
        self._add(int(record["round"]), values)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class Mlflow:
    names: Sequence[str] | None = None  # the clients' names, set by Trackers

    def __init__(self, folder: Path, name: str, config: Mapping[str, Any], config_text: str) -> None:
        # MLflow 3 keeps the local file store (what needs no server) behind this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())
        found = self.client.get_experiment_by_name("cohort")
        experiment = found.experiment_id if found else self.client.create_experiment("cohort")
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
        from cohort.core.tree import flatten

        params = [Param(k, str(v)[:500]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        import re

        step, now = int(record["round"]), int(time.time() * 1000)
        safe = lambda name: re.sub(r"[^0-9A-Za-z_\-. ]", "_", name)  # MLflow's key characters (a site may be "St. Mary's")
        rounds = [Metric(safe(k), v, now, step) for k, v in scalars(record).items()]
        clients = [Metric(f"client.{safe(name)}.{safe(k)}", v, now, step) for name, m in client_scalars(record, self.names).items()
                   for k, v in m.items()]
        for batch in (rounds, clients):  # the round's figures first: a refused client key cannot take them along
            for i in range(0, len(batch), 1000):
                self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status in ("rounds", "target") else "KILLED"
                                   if status in ("interrupted", "terminated") else "FAILED")


class Wandb:
    names: Sequence[str] | None = None  # the clients' names, set by Trackers

    def __init__(self, folder: Path, name: str, config: Mapping[str, Any], config_text: str) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(mode="offline", dir=str(folder), project="cohort", name=name, config=dict(config),
                              reinit="create_new")

    def log(self, record: Mapping[str, Any]) -> None:
        values: dict[str, Any] = dict(scalars(record))
        for name, m in client_scalars(record, self.names).items():
            values.update({f"clients/{name}/{k}": v for k, v in m.items()})
        self.run.log(values, step=int(record["round"]))

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("rounds", "target") else 1)


KINDS = {"tensorboard": TensorBoard, "mlflow": Mlflow, "wandb": Wandb}


class Trackers:
    """The run's trackers, each fed every round; one that fails is dropped with a warning."""

    def __init__(self, names: Sequence[str], folder: Path, name: str, config: Mapping[str, Any], config_text: str,
                 client_names: Sequence[str] | None = None) -> None:
        self.active: list[tuple[str, Any]] = []
        for kind in names:
            self._guard(kind, lambda k=kind: self.active.append((k, KINDS[k](folder, name, config, config_text))))
        for _, tracker in self.active:
            tracker.names = client_names

    def _guard(self, kind: str, action) -> bool:
        try:
            action()
            return True
        except Exception as e:  # a tracker's library or its disk: the run goes on without it
            warnings.warn(f"tracker {kind!r} failed and is switched off ({type(e).__name__}: {e}); metrics.jsonl "
                          "still has every round", stacklevel=3)
            return False

    def log(self, record: Mapping[str, Any]) -> None:
        for kind, tracker in list(self.active):
            if not self._guard(kind, lambda t=tracker: t.log(record)):
                self.active.remove((kind, tracker))

    def close(self, status: str) -> None:
        for kind, tracker in self.active:
            self._guard(kind, lambda t=tracker: t.close(status))
        self.active = []
