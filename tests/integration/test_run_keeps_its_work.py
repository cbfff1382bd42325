"""Whatever stops a run, the finished rounds' metrics, the last global model and a summary are kept."""

import json

import numpy as np
import pytest

from cohort.config import load_config
from cohort.core.arrays import load_safetensors
from cohort.experiment import run
from cohort.tracking import read_jsonl


class StopAt:
    """A progress callback that raises at a given round, as Ctrl-C or a bug in a writer would."""

    def __init__(self, round_, error):
        self.round, self.error, self.closed = round_, error, False

    def __call__(self, record, state):
        if record["round"] == self.round:
            raise self.error

    def close(self):
        self.closed = True


@pytest.mark.parametrize("error, stopped_by", [(KeyboardInterrupt(), "interrupted"),
                                               (RuntimeError("disk full"), "error: RuntimeError: disk full")])
def test_a_stopped_run_keeps_the_rounds_it_finished(tmp_path, error, stopped_by):
    config = load_config(None, ["rounds=6", f"output.dir='{tmp_path}'"])
    progress = StopAt(3, error)
    with pytest.raises(type(error)):
        run(config, progress=progress)
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["stopped_by"] == stopped_by and summary["rounds_completed"] == 3
    assert [r["round"] for r in read_jsonl(folder / "metrics.jsonl")] == [1, 2, 3]
    model = load_safetensors(folder / "model.safetensors")
    assert model["1.weight"].shape == (2, 30) and np.isfinite(model["1.weight"]).all()
    assert progress.closed
