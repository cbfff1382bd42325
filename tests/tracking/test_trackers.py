"""[output] trackers: TensorBoard event files read back with tensorboard's own reader, an MLflow local
store read back with MLflow's client, a W&B offline run; a failing tracker never stops a run."""

import json
import os
import warnings

import pytest

from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.experiment import run


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    config = load_config(None, ["rounds=3", f"output.dir='{out}'", "output.progress=false",
                                "output.trackers=['tensorboard', 'mlflow', 'wandb']"])
    result = run(config)
    records = [json.loads(line) for line in (result.folder / "metrics.jsonl").read_text().splitlines()]
    return result.folder, records


def test_tensorboard_files_hold_the_round_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, records = tracked
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    for metric in ("accuracy", "loss", "federated_accuracy", "train_loss", "bytes_sent"):
        got = [(e.step, e.value) for e in events.Scalars(metric)]
        assert [s for s, _ in got] == [1, 2, 3], metric
        assert [v for _, v in got] == pytest.approx([r[metric] for r in records], rel=1e-6), metric
    assert {f"clients/{c}/accuracy" for c in range(10)} <= set(tags)  # every client's held-out score
    assert "config" in events.Tags()["tensors"]


def test_mlflow_store_holds_params_and_metrics(tracked):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    folder, records = tracked
    client = MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("cohort").experiment_id])
    assert found.info.status == "FINISHED" and found.data.params["server.algorithm"] == "fedavg"
    history = client.get_metric_history(found.info.run_id, "accuracy")
    assert sorted((m.step, m.value) for m in history) == [(r["round"], pytest.approx(r["accuracy"])) for r in records]
    assert "client.3.accuracy" in found.data.metrics


def test_wandb_offline_run_is_written(tracked):
    folder, _ = tracked
    (run_dir,) = (folder / "wandb").glob("offline-run-*")
    (data,) = run_dir.glob("run-*.wandb")
    blob = data.read_bytes()
    assert len(blob) > 500 and b"accuracy" in blob and b"clients/0/accuracy" in blob and b"fedavg" in blob


def test_a_failing_tracker_is_switched_off_and_the_run_goes_on(tmp_path, monkeypatch):
    from cohort.tracking import trackers

    def broken(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trackers.TensorBoard, "log", broken)
    config = load_config(None, ["rounds=3", f"output.dir='{tmp_path}'", "output.progress=false",
                                "output.trackers=['tensorboard']"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(config)
    assert result.stopped_by == "rounds"
    assert len((result.folder / "metrics.jsonl").read_text().splitlines()) == 3
    assert sum("tracker 'tensorboard' failed and is switched off" in str(w.message) for w in caught) == 1


def test_unknown_trackers_are_refused():
    with pytest.raises(ConfigError, match="output.trackers is \\['neptune'\\]; expected a list of tensorboard, mlflow, wandb"):
        load_config(None, ["output.trackers=['neptune']"])


def test_site_names_mlflow_would_refuse_are_made_safe(tmp_path):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    sites = tmp_path / "sites"
    sites.mkdir()
    for name in ("St. Mary's", "Hospital (A)"):
        (sites / f"{name}.csv").write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    config = load_config(None, ["rounds=2", f"output.dir='{tmp_path}'", "output.progress=false", "data.dataset='csv'",
                                "data.partition='files'", f"data.client_files=['{sites}/*.csv']", "data.csv_target='y'",
                                "output.trackers=['mlflow']"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the tracker must not be switched off
        result = run(config)
    client = MlflowClient(tracking_uri=(result.folder / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("cohort").experiment_id])
    assert "client.St. Mary_s.accuracy" in found.data.metrics and "client.Hospital _A_.accuracy" in found.data.metrics
    assert len(client.get_metric_history(found.info.run_id, "federated_accuracy")) == 2
