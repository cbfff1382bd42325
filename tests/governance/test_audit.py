"""The audit log (issue 31): an append-only, hash-chained JSONL file at each end. Editing one byte,
deleting a line or swapping two lines is found, with the entry's number; the digest of arrays is the
same at both ends; a site's log and the server's are held against each other task by task."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cohort.core.errors import ConfigError
from cohort.core.types import ClientFailure, EvaluateResult, FailureStage, Reply
from cohort.governance.audit import AuditLog, arrays_digest, audit_fields, pairs, read, verify


def a_log(path, n=5):
    log = AuditLog(path)
    for i in range(1, n + 1):
        log.append("task", task_id=i, task="fit", round=i, sent_digest="s", status="ok", result_digest=f"r{i}")
    return path


def test_a_log_verifies_and_continues_where_it_stopped(tmp_path):
    path = a_log(tmp_path / "site.audit.jsonl")
    assert verify(path) == []
    again = AuditLog(path)  # a restarted client goes on from entry 5
    assert again.n == 5
    again.append("task", task_id=6)
    assert verify(path) == [] and [e["n"] for e in read(path)] == [1, 2, 3, 4, 5, 6]


def test_editing_one_byte_is_found_with_the_entrys_number(tmp_path):
    path = a_log(tmp_path / "log.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"result_digest":"r3"', '"result_digest":"r9"')  # one byte
    path.write_text("\n".join(lines) + "\n")
    (problem,) = verify(path)
    assert str(problem) == "line 3: entry 3 was edited after it was written (its hash does not match)"


def test_deleting_a_line_or_swapping_two_is_found(tmp_path):
    path = a_log(tmp_path / "log.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert str(verify(path)[0]) == "line 2: entry 3 where entry 2 belongs: an entry was removed or moved"
    path.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert str(verify(path)[0]) == "line 2: entry 3 where entry 2 belongs: an entry was removed or moved"
    # renumbered to hide the swap: the chain still breaks
    swapped = [json.loads(line) for line in (lines[0], lines[2], lines[1])]
    swapped[1]["n"], swapped[2]["n"] = 2, 3
    path.write_text("\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in swapped) + "\n")
    assert "entry 2 does not follow entry 1" in str(verify(path)[0])
    # the same fields written another way (spaces, key order, a key twice) are not the entry that was hashed
    path.write_text("\n".join([json.dumps(json.loads(lines[0])), *lines[1:]]) + "\n")
    assert str(verify(path)[0]) == ("line 1: entry 1 is not written as it was (its line is not the canonical JSON "
                                    "of its fields)")


def test_a_torn_last_line_is_found_then_cut_off_on_reopening_and_a_broken_log_is_not_continued(tmp_path):
    path = a_log(tmp_path / "log.jsonl")
    with open(path, "a") as f:
        f.write('{"n": 6, "ki')  # a crash while writing
    assert str(verify(path)[0]) == ("line 6: not a whole JSON entry (edited, or torn by a crash while it was "
                                    "written)")
    log = AuditLog(path)  # a restarted server or site goes on: the torn bytes are dropped, and the log says so
    last = list(read(path))[-1]
    assert log.n == 6 and last["kind"] == "torn_tail_removed" and last["bytes"] == 12 and verify(path) == []
    assert (tmp_path / last["kept_in"]).read_text() == '{"n": 6, "ki'  # the torn bytes are kept, as evidence
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]  # an entry in the middle cut short is no crash: the log is not continued
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="does not verify .*line 2.*not continued"):
        AuditLog(path)


def test_a_whole_last_entry_without_its_newline_is_continued_on_a_line_of_its_own(tmp_path):
    path = a_log(tmp_path / "log.jsonl", 2)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # the crash came between the entry and its newline
    assert verify(path) == []
    AuditLog(path).append("task", task_id=3)
    assert [e["n"] for e in read(path)] == [1, 2, 3] and verify(path) == []


def test_a_full_disk_leaves_no_torn_line(tmp_path, monkeypatch):
    path = a_log(tmp_path / "log.jsonl", 2)
    log = AuditLog(path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        log.append("task", task_id=3)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before and verify(path) == []
    log.append("task", task_id=3)  # the disk has room again: the chain goes on from entry 2
    assert [e["n"] for e in read(path)] == [1, 2, 3] and verify(path) == []


def test_the_cli_says_which_entry_broke_and_exits_non_zero(tmp_path):
    good, bad = a_log(tmp_path / "good.jsonl"), a_log(tmp_path / "bad.jsonl")
    bad.write_text(bad.read_text().replace('"round":4', '"round":5'))
    ok = subprocess.run([sys.executable, "-m", "cohort.cli", "audit", "verify", str(good)], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "5 entries, each whole and chained" in ok.stdout
    no = subprocess.run([sys.executable, "-m", "cohort.cli", "audit", "verify", str(good), str(bad)],
                        capture_output=True, text=True, timeout=60)
    assert no.returncode != 0
    assert f"{bad}: BROKEN at line 4: entry 4 was edited" in no.stdout
    assert "1 of 2 audit logs do not verify" in no.stderr


def test_the_digest_of_arrays_is_canonical_and_sensitive():
    a = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}}
    same = {"model": {"b": np.zeros(3, np.float32), "w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    assert arrays_digest(a) == arrays_digest(same) and len(arrays_digest(a)) == 64
    for other in ({"model": {**a["model"], "w": a["model"]["w"].reshape(3, 2)}},
                  {"model": {**a["model"], "w": a["model"]["w"].astype(np.float64)}},
                  {"model": {**a["model"], "b": np.array([0, 0, 1e-7], np.float32)}},
                  {"other": a["model"]}):
        assert arrays_digest(other) != arrays_digest(a)
    assert arrays_digest({}) == arrays_digest(None) == ""


def test_the_fields_of_each_outcome_and_the_pairing_of_two_logs():
    reply = Reply({"model": {"w": np.ones(2, np.float32)}}, 7, metrics={"train_loss": 0.1})
    ok = audit_fields(3, "fit", 1, "d", reply)
    assert ok["status"] == "ok" and ok["num_examples"] == 7 and ok["metrics"] == ["train_loss"]
    assert "0.1" not in json.dumps(ok)  # names of metrics, never their values
    refused = audit_fields(4, "fit", 2, "d", ClientFailure(0, FailureStage.REFUSED, "[require] secagg"))
    assert refused["status"] == "refused" and refused["reason"] == "[require] secagg"
    assert audit_fields(5, "evaluate", 2, "d", EvaluateResult(0.3, 9, {"accuracy": 0.9}))["metrics"] == ["accuracy", "loss"]
    assert audit_fields(6, "fit", 3, "d", None)["status"] == "expired"
    site = [{"kind": "task", **ok}, {"kind": "task", **refused}]
    server = [{"kind": "result", "client": 2, **ok}, {"kind": "result", "client": 2, **refused},
              {"kind": "result", "client": 1, **ok}]
    assert pairs(site, server, 2) == []
    tampered = [{"kind": "result", "client": 2, **ok, "result_digest": "x"}]
    assert pairs(site, tampered, 2) == ["task 3 (fit): result_digest differs: site " + repr(ok["result_digest"])
                                        + ", server 'x'", "task 4 (fit): in the site's log, not in the server's"]
