"""Central DP in whole runs: ε in every round's record, a run that stops before its budget is
crossed (with the reason in its summary), a budget that allows no round refused before anything is
written, and the policies DP cannot be accounted for refused at start."""

import json

import pytest

from cohort.cli import main
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.experiment import build, run

DP = ["privacy.mode=central", "privacy.noise_multiplier=0.6", "privacy.clip=0.5"]


def config(tmp_path, *sets):
    return load_config(None, [f"output.dir={tmp_path}", "output.progress=false", *DP, *sets])


def test_a_run_stops_before_its_budget_is_crossed(tmp_path):
    result = run(config(tmp_path, "rounds=50", "privacy.epsilon_max=25"))
    assert result.stopped_by.startswith("privacy budget: one more round would take ε to")
    records = [json.loads(line) for line in (result.folder / "metrics.jsonl").read_text().splitlines()]
    eps = [r["dp_epsilon"] for r in records]
    assert 1 <= len(eps) < 50 and max(eps) <= 25 and eps == sorted(eps)
    assert all(r["dp_delta"] == 1e-5 and r["dp_clip"] == 0.5 for r in records)
    summary = json.loads((result.folder / "summary.json").read_text())
    assert summary["stopped_by"] == result.stopped_by and "over privacy.epsilon_max = 25" in summary["stopped_by"]


def test_a_budget_that_allows_no_round_is_refused_before_anything_is_written(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path), "--no-progress", *[a for s in [*DP, "privacy.epsilon_max=0.5"] for a in ("--set", s)]])
    assert code == 2
    err = capsys.readouterr().err
    assert "privacy.epsilon_max allows no round" in err and "over privacy.epsilon_max = 0.5" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sets, why", [
    (["server.policy=fedbuff", "fedbuff.buffer_size=2", "fedbuff.concurrency=4"], "server.policy = 'sync'"),
    (["server.over_selection=0.3", "server.fraction=0.5"], "without server.over_selection"),
    (["server.algorithm=scaffold"], "also sends ['control'] back"),
    (["privacy.mode=local"], "privacy.mode is 'local'"),
    (["privacy.clip=0"], "privacy.clip is 0"),
    (["privacy.accountant=moments"], "privacy.accountant is 'moments'"),
])
def test_what_dp_cannot_account_for_is_refused_at_start(tmp_path, sets, why):
    with pytest.raises(ConfigError) as e:
        build(config(tmp_path, *sets))
    assert why in str(e.value)


def test_fedprox_and_fedsgd_take_central_dp(tmp_path):
    for algorithm in ("fedprox", "fedsgd"):
        result = run(config(tmp_path, "rounds=2", f"server.algorithm={algorithm}", f"name={algorithm}"), write=False)
        assert result.state.round == 2 and result.state.history[-1]["dp_epsilon"] > 0
