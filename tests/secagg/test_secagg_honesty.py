"""What docs/threat-model.md promises under secure aggregation, checked against what the server writes.

A run of the embedded demo (its data in 4 hospitals) with ``secagg.mode = "secagg"``: every file of its run
folder, the live view's snapshot and the printed log are scanned for each client's example counts
(training and held-out) and its losses (training and held-out), as each client computed them. The
same scan of the same run without secure aggregation must find them all (the positive control),
and under secure aggregation it must find none, while the clients' rows say only what the threat
model lists. Central DP's ``dp_clipped_fraction`` is counted from the clients' masked flags: 1 with
a tiny clip, 0 with a huge one, as without secure aggregation — never a wrong 0.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from cohort.algorithms.base import ClientHalf
from cohort.algorithms.fedavg import LocalSteps
from cohort.cli import main
from cohort.core.arrays import load_safetensors
from cohort.tracking.view.snapshot import RunReader

ROOT = Path(__file__).resolve().parents[2]
SETS = ["rounds=2", "data.num_clients=4", "data.alpha=10", "data.holdout_fraction=0.3"]  # counts 30 to 92, none alike
ORIGINAL = (LocalSteps.fit, ClientHalf.evaluate)
INT = re.compile(r"(?<![\w.])\d+(?![\w.])")
FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")


class Truth:
    """What each client computed, recorded where it computes it (the in-process channel)."""

    def __init__(self, monkeypatch) -> None:
        self.counts: set[int] = set()
        self.losses: list[float] = []
        fit, evaluate = ORIGINAL  # not an earlier run's spies

        def spy_fit(half, message, trainer, state):
            reply, after = fit(half, message, trainer, state)
            self.counts.add(int(reply.num_examples))
            self.losses.append(float(reply.metrics["train_loss"]))
            return reply, after

        def spy_evaluate(half, message, trainer, state):
            result, after = evaluate(half, message, trainer, state)
            self.counts.add(int(result.num_examples))
            self.losses.append(float(result.loss))
            return result, after

        monkeypatch.setattr(LocalSteps, "fit", spy_fit)
        monkeypatch.setattr(ClientHalf, "evaluate", spy_evaluate)


def run(tmp_path, monkeypatch, capfd, name, *sets):
    truth = Truth(monkeypatch)
    argv = ["run", "--out", str(tmp_path), "--no-progress", *[a for s in [*SETS, f"name={name}", *sets] for a in ("--set", s)]]
    assert main(argv) == 0
    out, err = capfd.readouterr()
    (folder,) = tmp_path.glob(f"{name}-*")
    return folder, truth, out + err


def texts(folder: Path, log: str) -> dict[str, str]:
    """Everything the server left to read, as text: each file of the run folder (arrays as their
    values), its SQLite databases row by row, the live view's snapshot and the log."""
    import sqlite3

    reader = RunReader(folder)
    reader.refresh()
    view = {k: v for k, v in reader.snapshot().items() if k != "config"}  # the config is the input we gave
    out = {"log": log, "view": json.dumps(view)}
    for path in folder.rglob("*"):
        if not path.is_file() or path.name == "config.toml":  # the config is the input we gave
            continue
        if path.suffix == ".safetensors":
            out[str(path)] = " ".join(repr(float(v)) for a in load_safetensors(path).values() for v in np.ravel(a))
        elif path.suffix in (".sqlite", ".db"):
            db = sqlite3.connect(path)
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            out[str(path)] = " ".join(repr(row) for t in tables for row in db.execute(f"SELECT * FROM {t}"))
            db.close()
        elif path.name == "audit.jsonl":  # its entry and task numbers, rounds and times are the server's counters
            entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            out[str(path)] = "\n".join(json.dumps({k: v for k, v in e.items()
                                                   if k not in ("n", "task_id", "round", "time")}) for e in entries)
        else:
            out[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    return out


def found(docs: dict[str, str], truth: Truth) -> tuple[dict[int, list[str]], dict[float, list[str]]]:
    """Where each example count (as an integer token) and each loss (to 6 significant digits) appears."""
    counts: dict[int, list[str]] = {}
    losses: dict[float, list[str]] = {}
    for where, text in docs.items():
        tokens = set(INT.findall(text))
        for n in truth.counts:
            if str(n) in tokens:
                counts.setdefault(n, []).append(where)
        numbers = np.array([float(x) for x in FLOAT.findall(text)] or [math.nan])
        for v in truth.losses:
            if np.any(np.abs(numbers - v) <= 1e-6 * max(1.0, abs(v))):
                losses.setdefault(v, []).append(where)
    return counts, losses


def documented_row_keys() -> set[str]:
    """The keys of a client's row under secure aggregation, as the threat model lists them."""
    doc = (ROOT / "docs" / "threat-model.md").read_text()
    line = next(x for x in doc.splitlines() if x.startswith("| which clients took part"))
    return set(re.findall(r"`(\w+)`", line.split("|")[3]))


@pytest.fixture
def runs(tmp_path, monkeypatch, capfd):
    plain = run(tmp_path, monkeypatch, capfd, "plain")
    secure = run(tmp_path, monkeypatch, capfd, "secure", "secagg.mode=secagg")
    return plain, secure


def test_no_client_count_or_loss_reaches_the_server_under_secure_aggregation(runs):
    (plain, plain_truth, plain_log), (secure, truth, log) = runs
    assert len(truth.counts) == 8 and min(truth.counts) > 20  # 4 training and 4 held-out counts, told apart from ids
    assert len(truth.losses) == 4 * 2 * 2  # 4 clients, 2 rounds, fit and evaluate
    # the positive control: without secure aggregation the scan finds every count and every loss
    def scrubbed(folder, log):  # the test's own paths (pytest-NN) are not the server's output
        return {k: v.replace(str(folder.parent), "TMP") for k, v in texts(folder, log).items()}

    counts, losses = found(scrubbed(plain, plain_log), plain_truth)
    assert set(counts) == plain_truth.counts and set(losses) == set(plain_truth.losses)
    assert any("clients.jsonl" in w for w in counts[max(plain_truth.counts)])
    # under secure aggregation it finds none of them, in any file, the view or the log
    docs = scrubbed(secure, log)
    assert {"log", "view"} < set(docs) and any(w.endswith("clients.jsonl") for w in docs) and len(docs) >= 8
    counts, losses = found(docs, truth)
    assert counts == {} and losses == {}, (counts, losses)
    # what the server still has of each client is what the threat model lists: that it took part
    rows = [json.loads(x) for x in (secure / "clients.jsonl").read_text().splitlines()]
    assert {(r["round"], r["task"]) for r in rows} == {(r, t) for r in (1, 2) for t in ("fit", "evaluate")}
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 4 * 2 * 2
    assert set().union(*rows) <= documented_row_keys() | {"round", "name"}
    # and every record says which protection was on, with the survivors' means in place of each client's figures
    records = [json.loads(x) for x in (secure / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert (r["secagg_mode"], r["secagg_threshold"], r["secagg_range_clipped"]) == ("secagg", 2, 0)
        assert 0 < r["train_loss"] < 1 and 0 < r["federated_loss"] < 1 and 0.5 < r["federated_accuracy"] <= 1
    assert "secagg" in log and "secagg_mode" not in (plain / "metrics.jsonl").read_text()
    view = RunReader(secure)
    view.refresh()
    snap = view.snapshot()
    assert snap["protections"]["secagg_mode"] == "secagg" and all(c["examples"] is None for c in snap["clients"])
    assert "secagg_threshold" not in snap["metrics"]


def test_the_means_under_secure_aggregation_are_each_clients_once(tmp_path, monkeypatch, capfd):
    folder, truth, _ = run(tmp_path, monkeypatch, capfd, "means", "secagg.mode=secagg", "rounds=1")
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    fit, held = truth.losses[:4], truth.losses[4:]  # round 1: four fits, then four evaluations
    assert record["train_loss"] == pytest.approx(np.mean(fit), abs=1e-6)  # fixed point: 2^-20 per client
    assert record["federated_loss"] == pytest.approx(np.mean(held), abs=1e-6)


@pytest.mark.parametrize("clip, fraction", [(0.01, 1.0), (1000.0, 0.0)])
def test_dp_clipped_fraction_under_secure_aggregation_is_counted_not_assumed(tmp_path, monkeypatch, capfd, clip, fraction):
    dp = ["privacy.mode=central", f"privacy.clip={clip}", "privacy.noise_multiplier=0.5", "privacy.adaptive_clip=false",
          "evaluate.federated_fraction=0"]
    got = {}
    for name, extra in (("dp", []), ("dpsecure", ["secagg.mode=secagg"])):
        folder, _, _ = run(tmp_path, monkeypatch, capfd, name, *dp, *extra)
        got[name] = [json.loads(x)["dp_clipped_fraction"] for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert got["dp"] == [fraction, fraction] and got["dpsecure"] == [fraction, fraction]


@pytest.mark.slow
def test_a_deployed_secure_run_leaves_no_client_figure_in_its_folder_database_or_logs(tmp_path, monkeypatch, capfd):
    """The same scan over a real `cohort server` with four `cohort client` processes: the run folder
    with its `server.sqlite`, and the server's and clients' printed logs. The truth comes from the
    in-process run of the same config (a deployment computes the simulation's bits)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from processes import Federation

    _, truth, _ = run(tmp_path / "sim", monkeypatch, capfd, "truth")
    sets = [*SETS, "name=deployed", "secagg.mode=secagg"]
    with Federation(tmp_path / "dep", sets) as fed:
        clients = [fed.client(c) for c in range(4)]
        out = fed.wait(timeout=300)
        logs = [out]
        for c in clients:
            c_out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0, c_err
            logs.append(c_out)
        logs.append(fed.stderr())
    (folder,) = (tmp_path / "dep").glob("deployed-*")
    docs = {k: v.replace(str(tmp_path), "TMP") for k, v in texts(folder, "\n".join(logs)).items()}  # not the test's paths
    assert any(w.endswith("server.sqlite") for w in docs)  # the server's own database is scanned too
    counts, losses = found(docs, truth)
    assert counts == {} and losses == {}, (counts, losses)
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["secagg_mode"] for r in records] == ["secagg", "secagg"]
