"""A site's policy (issue 31): the rules load strictly, the server's declaration is held against them,
and the site's own gate refuses what they forbid before anything is computed, counting its days in a
file that survives a restart."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from cohort.channel.grpc.client import serve
from cohort.channel.grpc.server import GrpcChannel
from cohort.client.base import FitResult
from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, FailureStage, Instruction, Message, Reply
from cohort.governance.policy import (
    Gate, SitePolicy, declaration, load_policy, preflight, refusals, task_kind, usage_path,
)

DAY = 1_796_688_000.0  # 2026-12-08 00:00 UTC


def run(**changes):
    base = dict(algorithm="fedavg", secagg="none", central_noise_multiplier=0.0, clip=0.0, tasks=("train",), rounds=20)
    return declaration(**{**base, **changes})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ the file

def test_a_policy_file_loads_with_every_table_and_refuses_a_typo_naming_the_key(tmp_path):
    policy = load_policy(write(tmp_path, """
[accept]
tasks = ["train"]
algorithms = ["fedavg", "fedprox"]
apps = ["hospital_models"]
[require]
secagg = true
central_noise_multiplier = 0.8
[limits]
rounds_per_day = 10
max_parameters = 1_000_000
[disclose]
columns = ["age", "chol", "num"]
metrics = "aggregates"
"""))
    assert policy.accept.algorithms == ("fedavg", "fedprox") and policy.require.secagg
    assert policy.limits.rounds_per_day == 10 and policy.disclose.metrics == "aggregates"
    assert SitePolicy.from_dict(json.loads(policy.to_json())) == policy  # what its hello carries reads back equal
    with pytest.raises(ConfigError, match=r"unknown config key 'require.secgg'; did you mean 'require.secagg'"):
        load_policy(write(tmp_path, "[require]\nsecgg = true\n"))
    with pytest.raises(ConfigError, match=r"disclose.metrics is 'some'; expected one of all, aggregates, none"):
        load_policy(write(tmp_path, "[disclose]\nmetrics = 'some'\n"))
    with pytest.raises(ConfigError, match=r"accept.tasks names \['fit'\]; the kinds of task are train, evaluate"):
        load_policy(write(tmp_path, "[accept]\ntasks = ['fit']\n"))
    with pytest.raises(ConfigError, match=r"limits.rounds_per_day is -1"):
        load_policy(write(tmp_path, "[limits]\nrounds_per_day = -1\n"))
    with pytest.raises(ConfigError, match=r"--policy .*nope.toml' does not exist"):
        load_policy(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_policy(write(tmp_path, "[limits\n"))


def test_an_empty_policy_accepts_everything_but_apps():
    policy = SitePolicy()
    assert refusals(policy, run(tasks=("train", "evaluate", "statistics"), algorithm="scaffold")) == []
    assert policy.accept.apps == ()  # built-ins only, unless the operator lists a module


# ------------------------------------------------------------------------------------------ the declaration

def test_a_declaration_is_refused_rule_by_rule():
    strict = SitePolicy.from_dict({"accept": {"algorithms": ["fedavg"], "tasks": ["train"]},
                                   "require": {"secagg": True, "central_noise_multiplier": 0.8, "max_clip": 1.0},
                                   "disclose": {"metrics": "none"}})
    broken = refusals(strict, run(algorithm="scaffold", tasks=("train", "evaluate"), central_noise_multiplier=0.5,
                                  clip=2.0))
    assert [b.split(":")[0] for b in broken] == ["[accept] algorithms", "[accept] tasks", "[require] secagg",
                                                 "[require] central_noise_multiplier", "[require] max_clip",
                                                 "[disclose] metrics"]
    assert "noise multiplier 0.5; this site requires at least 0.8" in broken[3]
    assert refusals(strict, run(secagg="secagg", central_noise_multiplier=1.0, clip=0.5)) == []


def test_the_server_preflight_names_each_refusing_site_and_stops_only_when_all_refuse():
    secure = SitePolicy.from_dict({"require": {"secagg": True}}).to_json()
    lines, nobody = preflight({0: ("cleveland", secure), 1: ("va", ""), 2: ("hungarian", "{not json")}, run())
    assert not nobody  # va has no policy, and hungarian's is its own business: they take part
    assert lines[0].startswith("cleveland (client 0) refuses this run: [require] secagg")
    assert lines[1].startswith("hungarian (client 2) sent a policy this server cannot read")
    lines, nobody = preflight({0: ("cleveland", secure), 3: ("swiss", secure)}, run())
    assert nobody and len(lines) == 2 and "swiss (client 3)" in lines[1]
    assert preflight({}, run()) == ([], False)


# ------------------------------------------------------------------------------------------ the gate

def test_a_site_that_requires_secagg_refuses_plain_training_and_statistics_but_not_key_stages():
    gate = Gate(SitePolicy.from_dict({"require": {"secagg": True}}))
    assert gate.welcome("fedavg", run(secagg="secagg")) == []
    assert "[require] secagg: 'fit' would send this site's train result in the clear" in gate.admit("fit", {}, {"round": 1})
    assert "[require] secagg" in gate.admit("data_statistics", {}, {})
    fair = {"round": 1, "secagg": {"id": 0, "threshold": 3, "neighbours": None}}
    for task in ("secagg_advertise", "secagg_share", "secagg:fit", "secagg_unmask", "secagg:data_statistics",
                 "data_schema", "data_categories", "evaluate"):
        assert gate.admit(task, {}, fair) is None, task


def test_a_secure_round_the_server_made_too_small_to_hide_one_site_is_refused():
    gate = Gate(SitePolicy.from_dict({"require": {"secagg": True, "secagg_min_sites": 3}}))
    gate.welcome("fedavg", run(secagg="secagg+"))
    alone = {"round": 1, "secagg": {"id": 4, "threshold": 1, "neighbours": [4]}}  # the server unmasks this site alone
    assert "[require] secagg_min_sites: the server set the secure round's threshold to 1" in gate.admit(
        "secagg_advertise", {}, alone)
    few = {"round": 1, "secagg": {"id": 4, "threshold": 3, "neighbours": [5]}}
    assert "gave this site 1 neighbours; this site masks with at least 2 others" in gate.admit("secagg_advertise", {}, few)
    assert gate.admit("secagg_advertise", {}, {"round": 1, "secagg": {"id": 4, "threshold": 3, "neighbours": [5, 6]}}) is None
    with pytest.raises(ConfigError, match="require.secagg_min_sites is 1"):
        SitePolicy.from_dict({"require": {"secagg_min_sites": 1}})


def test_a_site_with_local_dp_refuses_an_algorithm_that_would_send_past_it():
    checked = []

    def check(name, settings):
        checked.append((name, dict(settings)))
        return "SCAFFOLD's control variates would leave unprotected" if name == "scaffold" else None

    gate = Gate(SitePolicy.from_dict({"require": {"local_noise_multiplier": 1.0}}), check_algorithm=check)
    assert gate.welcome("scaffold", run(algorithm="scaffold"), {"lr": 1.0}) == [
        "[require] local_noise_multiplier: SCAFFOLD's control variates would leave unprotected"]
    assert "control variates" in gate.admit("fit", {}, {"round": 1}) and checked == [("scaffold", {"lr": 1.0})]
    assert gate.welcome("fedavg", run()) == [] and gate.admit("fit", {}, {"round": 1}) is None
    assert [task_kind(t) for t in ("secagg:fit", "secagg_share", "evaluate", "data_histogram")] == \
        ["train", None, "evaluate", "statistics"]


def test_a_declaration_the_site_refuses_refuses_every_task():
    gate = Gate(SitePolicy.from_dict({"accept": {"algorithms": ["fedavg"]}}))
    assert gate.welcome("scaffold", run(algorithm="scaffold"))
    assert "[accept] algorithms: the run trains with 'scaffold'" in gate.admit("evaluate", {}, {})


def test_a_ten_round_daily_cap_stops_at_eleven_survives_a_restart_and_resets_the_next_day(tmp_path):
    policy = SitePolicy.from_dict({"limits": {"rounds_per_day": 10}})
    now = [DAY + 3600]
    usage = usage_path(policy, tmp_path / "site.toml")
    assert usage == tmp_path / "site.usage.json"
    gate = Gate(policy, "site.toml", usage, clock=lambda: now[0])
    for r in range(1, 11):
        assert gate.admit("fit", {}, {"round": r}) is None
        assert gate.admit("fit", {}, {"round": r}) is None  # the same round again at once (a retry) is no new round
    refused = gate.admit("fit", {}, {"round": 11})
    assert refused == ("refused by the site's policy (site.toml): [limits] rounds_per_day: this site has trained 10 "
                       "rounds today (2026-12-08, UTC), its most; it trains again tomorrow")
    assert gate.admit("evaluate", {}, {"round": 11}) is None  # an evaluation is no training round
    again = Gate(policy, "site.toml", usage, clock=lambda: now[0])  # the client restarted: the count stays
    assert "rounds_per_day" in again.admit("fit", {}, {"round": 12})
    now[0] += 86_400  # the next day
    assert again.admit("fit", {}, {"round": 12}) is None
    assert json.loads(usage.read_text()) == {"day": "2026-12-09", "tasks": 1, "rounds": ["12"]}


def test_the_daily_cap_cannot_be_dodged_by_repeating_or_leaving_out_round_numbers():
    gate = Gate(SitePolicy.from_dict({"limits": {"rounds_per_day": 3}}), clock=lambda: DAY)
    for r in (5, 6, 5):  # going back to a round it trained is another round of training
        assert gate.admit("fit", {}, {"round": r}) is None
    assert "rounds_per_day: this site has trained 3 rounds today" in gate.admit("fit", {}, {"round": 6})
    assert "rounds_per_day: this site has trained 3 rounds today" in gate.admit("fit", {}, {"round": 1})  # a new run
    fresh = Gate(SitePolicy.from_dict({"limits": {"rounds_per_day": 3}}), clock=lambda: DAY)
    assert "a training task without its round number (None) cannot be counted" in fresh.admit("fit", {}, {})
    assert "cannot be counted" in fresh.admit("fit", {}, {"round": "7"})


def test_task_caps_model_size_and_columns_are_enforced_from_the_task_itself(tmp_path):
    gate = Gate(SitePolicy.from_dict({"limits": {"tasks_per_day": 2, "max_parameters": 100},
                                      "disclose": {"columns": ["age", "num"]}}), clock=lambda: DAY)
    big = {"model": {"w": np.zeros((10, 11), np.float32)}}
    assert "[limits] max_parameters: the model has 110 parameters; this site takes at most 100" in gate.admit("fit", big, {})
    assert "[disclose] columns: 'data_statistics' summarises ['chol']" in \
        gate.admit("data_statistics", {}, {"site": {"columns": ["age", "chol", "num"]}})
    assert gate.admit("data_schema", {}, {}) is None  # column names only
    assert gate.admit("data_statistics", {}, {"site": {"columns": ["num", "age"]}}) is None
    assert "[limits] tasks_per_day: this site has answered 2 tasks today" in gate.admit("fit", {}, {"round": 1})


def test_a_usage_file_that_cannot_be_written_refuses_the_task_and_a_corrupt_one_stops_the_start(tmp_path):
    gate = Gate(SitePolicy.from_dict({"limits": {"rounds_per_day": 3}}), usage=tmp_path / "missing" / "u.json")
    assert "[limits] usage_file: this site cannot record today's usage" in gate.admit("fit", {}, {"round": 1})
    bad = tmp_path / "u.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="is not one this site wrote.*delete it"):
        Gate(SitePolicy(), usage=bad)


def test_metrics_leave_as_the_policy_says():
    reply = Reply({"model": {}}, 10, metrics={"train_loss": 0.5})
    none = Gate(SitePolicy.from_dict({"disclose": {"metrics": "none"}}))
    aggregates = Gate(SitePolicy.from_dict({"disclose": {"metrics": "aggregates"}}))
    assert none.release("fit", reply).metrics == {} and none.release("secagg:fit", reply).metrics == {}
    assert aggregates.release("fit", reply).metrics == {}
    assert aggregates.release("secagg:fit", reply).metrics == {"train_loss": 0.5}  # inside a secure sum
    assert none.release("fit", reply).num_examples == 10  # the weight stays: FedAvg needs it
    assert "[disclose] metrics: 'evaluate' sends this site's scores in the clear" in none.admit("evaluate", {}, {})
    assert aggregates.admit("secagg:evaluate", {}, {}) is None
    counts = Reply({"site": {}}, 40, metrics={"rows_train": 30, "rows_held": 10})  # a statistics reply's answer
    assert none.release("data_categories", counts).metrics == {"rows_train": 30, "rows_held": 10}


# ------------------------------------------------------------------------------------------ over gRPC

class Counting:
    """A client whose training is counted: a refused task must leave it at zero."""

    def __init__(self):
        self.trained = 0

    def __call__(self, client_id):
        return self

    def train(self, arrays, config, hooks):
        self.trained += 1
        return FitResult({k: np.ones_like(v) for k, v in arrays.items()}, 5, {"train_loss": 1.0})

    def evaluate(self, arrays, config):
        raise AssertionError("not asked")


def test_over_grpc_a_refused_task_computes_nothing_and_reaches_the_server_as_a_refusal_with_its_rule():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, declaration=run())
    client, logged, outcome = Counting(), [], []
    gate = Gate(SitePolicy.from_dict({"require": {"secagg": True}}), "site.toml")

    def site():
        try:
            outcome.append(serve(channel.address, client, 0, retry_for_s=5, log=logged.append, gate=gate))
        except Exception as e:  # kept for the test to look at
            outcome.append(e)

    thread = threading.Thread(target=site, daemon=True)
    thread.start()
    try:
        channel.wait_for_clients(1, 30)
        ((name, policy),) = channel.site_policies().values()
        assert SitePolicy.from_dict(json.loads(policy)).require.secagg  # its hello carried the policy
        message = Message("fit", {"model": {"w": np.zeros(3, np.float32)}}, {"round": 1})
        ((_, failure),) = list(channel.run(message, [Instruction(0, {})], timeout_s=30))
    finally:
        channel.close()
        thread.join(timeout=30)
    assert isinstance(failure, ClientFailure) and failure.stage == FailureStage.REFUSED
    assert failure.reason == ("(reported by the client) refused by the site's policy (site.toml): [require] secagg: "
                              "the run has secagg.mode = 'none'; this site sends its updates only inside secure "
                              "aggregation")
    assert client.trained == 0  # nothing was computed
    assert any("policy refuses the server's run" in line and "[require] secagg" in line for line in logged)
    assert any("fit of round 1: refused by the site's policy" in line for line in logged)  # the site's own log


def test_over_grpc_a_server_that_declares_secagg_but_sends_a_plain_fit_is_refused_by_the_task_itself():
    channel = GrpcChannel("127.0.0.1:0", "fedavg", {}, declaration=run(secagg="secagg"))
    client, logged, outcome = Counting(), [], []
    gate = Gate(SitePolicy.from_dict({"require": {"secagg": True}}), "site.toml")
    thread = threading.Thread(target=lambda: outcome.append(serve(channel.address, client, 0, retry_for_s=5,
                                                                  log=logged.append, gate=gate)), daemon=True)
    thread.start()
    try:
        channel.wait_for_clients(1, 30)
        message = Message("fit", {"model": {"w": np.zeros(3, np.float32)}}, {"round": 1})
        ((_, failure),) = list(channel.run(message, [Instruction(0, {})], timeout_s=30))
    finally:
        channel.close()
        thread.join(timeout=30)
    assert gate.broken == []  # the declaration was accepted: the task itself was refused
    assert isinstance(failure, ClientFailure) and failure.stage == FailureStage.REFUSED
    assert "[require] secagg: 'fit' would send this site's train result in the clear" in failure.reason
    assert client.trained == 0


def test_the_policy_on_the_operating_a_site_page_loads_as_written(tmp_path):
    page = (Path(__file__).resolve().parents[2] / "docs" / "howto" / "operating-a-site.md").read_text()
    (block,) = [b.split("\n", 1)[1] for b in page.split("```")[1::2] if b.startswith("toml")]
    policy = load_policy(write(tmp_path, block))
    assert policy.require.secagg and policy.require.secagg_min_sites == 3 and policy.disclose.metrics == "aggregates"
    assert policy.accept.tasks == ("train", "statistics") and policy.limits.rounds_per_day == 10
