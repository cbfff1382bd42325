"""Site policies with real processes on 127.0.0.1 (issue 31): each site enforces its own rules on the
tasks a real server sends, the server records every refusal with its rule, a config that no site
accepts stops before round 1, and an app that is not on a site's list is never imported."""

import json
import subprocess
import sys

from processes import ENV, TESTS, Federation, cohort

from cohort.governance.audit import pairs, read, verify

SETS = ["data.num_clients=3", "rounds=5", "evaluate.federated_fraction=0", "name=gov"]


def policy(tmp_path, name, text):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def test_each_site_enforces_its_own_policy_and_the_server_records_the_rule(tmp_path):
    capped = policy(tmp_path, "capped", "[limits]\nrounds_per_day = 3\n[disclose]\nmetrics = 'none'\n")
    secure = policy(tmp_path, "secure", "[require]\nsecagg = true\n")
    with Federation(tmp_path, SETS) as fed:
        sites = [fed.client(0, "--policy", capped, "--name", "capped"), fed.client(1, "--policy", secure, "--name", "secure"),
                 fed.client(2, "--name", "open", "--audit", str(tmp_path / "open.audit.jsonl"))]
        printed = fed.wait()
        logs = [s.communicate(timeout=60) for s in sites]
    assert "policy: secure (client 1) refuses this run: [require] secagg" in printed  # named before round 1
    assert printed.index("policy: secure") < printed.index("round 1/5")
    assert "stopped by rounds after 5 rounds" in printed
    (folder,) = tmp_path.glob("gov-*")
    rows = [json.loads(line) for line in (folder / "clients.jsonl").read_text().splitlines()]
    fits = {c: [r for r in rows if r["client"] == c and r["task"] == "fit"] for c in range(3)}
    # the secure site refused every round, with the rule; nothing of it reached the model
    assert len(fits[1]) == 5 and all(r["status"] == "failed" and r["stage"] == "refused" for r in fits[1])
    assert all("[require] secagg" in r["failure"] for r in fits[1])
    # the capped site trained 3 rounds, then refused with its reason; its metrics never left it
    assert [r["status"] for r in fits[0]] == ["ok"] * 3 + ["failed"] * 2
    assert all("[limits] rounds_per_day: this site has trained 3 rounds today" in r["failure"] for r in fits[0][3:])
    assert all(r["metrics"] == {} for r in fits[0][:3]) and all(r["metrics"] for r in fits[2])
    assert all(r["status"] == "ok" for r in fits[2])
    # the sites' own logs say what they refused and why
    assert "fit of round 4: refused by the site's policy" in logs[0][1] and "[limits] rounds_per_day" in logs[0][1]
    assert "this site's policy refuses the server's run" in logs[1][1]
    assert sites[2].returncode == 0
    usage = json.loads((tmp_path / "capped.usage.json").read_text())
    assert usage["rounds"] == ["1", "2", "3"]  # kept beside the policy, for a restart
    # the audit trail at both ends: each chain verifies, and the two sides agree task by task, the digest
    # of every result the server received being the digest the site recorded of what it sent
    server_log = folder / "audit.jsonl"
    site_logs = {0: tmp_path / "capped.audit.jsonl", 1: tmp_path / "secure.audit.jsonl", 2: tmp_path / "open.audit.jsonl"}
    for log in (server_log, *site_logs.values()):
        assert verify(log) == [], log
    server = list(read(server_log))
    for cid, log in site_logs.items():
        site = list(read(log))
        assert pairs(site, server, cid) == []
        assert len([e for e in site if e["task"] == "fit"]) == 5
    folded = [e for e in server if e["client"] == 2 and e["task"] == "fit"]
    assert all(len(e["result_digest"]) == 64 for e in folded)
    assert {e["status"] for e in server if e["client"] == 1} == {"refused"}
    out = subprocess.run([sys.executable, "-m", "cohort.cli", "audit", "compare", "--site", str(site_logs[0]),
                          "--server", str(server_log), "--id", "0"], capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0 and "agree on every task of client 0" in out.stdout


def test_a_config_that_every_site_refuses_stops_before_round_1_naming_the_sites_and_the_rule(tmp_path):
    secure = policy(tmp_path, "secure", "[require]\nsecagg = true\n")
    algorithms = policy(tmp_path, "algorithms", "[accept]\nalgorithms = ['fedprox']\n")
    sets = ["data.num_clients=2", "rounds=3", "name=none"]
    with Federation(tmp_path, sets) as fed:
        sites = [fed.client(0, "--policy", secure, "--name", "cleveland"),
                 fed.client(1, "--policy", algorithms, "--name", "va")]
        fed.server.wait(timeout=120)
        err = fed.stderr()
        for s in sites:
            s.communicate(timeout=60)
    assert fed.server.returncode != 0
    assert "no connected site's policy accepts this run, so it stops before round 1" in err
    assert "cleveland (client 0) refuses this run: [require] secagg" in err
    assert "va (client 1) refuses this run: [accept] algorithms: the run trains with 'fedavg'" in err
    assert "round 1/" not in "".join(fed.printed) and "round 1/" not in err


AUDITED = r"""
import sys
imported = []
sys.addaudithook(lambda event, args: imported.append(args[0]) if event == "import" else None)
from cohort.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("IMPORTED" if any(str(m).startswith("evil_app") for m in imported) or "evil_app" in sys.modules else "CLEAN")
sys.exit(code)
"""


def test_an_app_that_is_not_on_the_sites_list_is_never_imported(tmp_path):
    allowed = policy(tmp_path, "site", "[accept]\napps = ['deploy_app']\n")
    out = subprocess.run([sys.executable, "-c", AUDITED, "client", "--server", "127.0.0.1:9", "--id", "3",
                          "--policy", allowed, "--app", "evil_app:client_fn", "--retry-s", "0"],
                         capture_output=True, text=True, timeout=120, env=ENV, cwd=TESTS)
    assert out.returncode != 0
    assert "--app 'evil_app:client_fn' is not on this site's list of apps" in out.stderr
    assert "it was not imported" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == "CLEAN"  # the audit hook saw no import of it


def test_sites_with_their_own_files_agree_and_train_under_a_metrics_policy_and_both_audits_cover_the_agreement(tmp_path):
    """A site federation (the data agreement, then training) where every site lets no per-site metric leave:
    the agreement's row counts still do (they are its answer), the training metrics do not, and the server's
    audit log holds the agreement's tasks too, entry for entry with each site's."""
    from hospitals import make_hospitals

    files = make_hospitals(tmp_path / "data", per_site=60, seed=3, count=3)
    sets = ["data.dataset=csv", "data.partition=files", f"data.client_files={[str(f) for f in files]}",
            "data.csv_target=diagnosis", "data.categorical=['sex','chest_pain','smoker']", "data.missing_values=['?']",
            "data.missing_by_column={cholesterol=['0']}", "model.name=logistic_regression", "rounds=2",
            "data.impute=mean", "evaluate.federated_fraction=0", "name=sites"]
    quiet = policy(tmp_path, "quiet", "[disclose]\nmetrics = 'none'\n")
    with Federation(tmp_path, sets) as fed:
        sites = [fed._start(cohort("client", "--server", fed.address, "--id", str(c), "--retry-s", "20", "--data", str(f),
                                   "--policy", quiet, "--audit", str(tmp_path / f"site{c}.jsonl"),
                                   *[a for s in sets for a in ("--set", s)])) for c, f in enumerate(files)]
        printed = fed.wait()
        for s in sites:
            out, err = s.communicate(timeout=60)
            assert s.returncode == 0, err
    assert "agreed with 3 sites" in printed and "round 2/2  clients 3/3" in printed
    (folder,) = tmp_path.glob("sites-*")
    rows = [json.loads(line) for line in (folder / "clients.jsonl").read_text().splitlines()]
    assert rows and all(r["metrics"] == {} for r in rows if r["task"] == "fit")
    server = list(read(folder / "audit.jsonl"))
    assert {"data_schema", "data_statistics", "fit"} <= {e["task"] for e in server}
    for c in range(3):
        site = list(read(tmp_path / f"site{c}.jsonl"))
        assert verify(tmp_path / f"site{c}.jsonl") == [] and pairs(site, server, c) == []
