"""A full disk mid-run (simulated ENOSPC on the metrics file after a few rounds): one clear line
naming the folder, only whole JSON lines, and the model and summary of the finished rounds."""

import json
import subprocess
import sys

SCRIPT = """
import errno, os, sys
from cohort.cli import main
real_write, calls = os.write, {"n": 0}
def write(fd, data):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
        calls["n"] += 1
        if calls["n"] > 3:  # the fourth round's record hits a full disk, after half of it is written
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(fd, data)
os.write = write
sys.exit(main(sys.argv[1:]))
"""


def test_enospc_mid_run_keeps_whole_lines_model_and_summary(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, "run", "--out", str(tmp_path), "--quiet", "--set", "rounds=10",
                        "--set", "name=disk"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    (folder,) = tmp_path.glob("disk-*")
    assert str(folder) in r.stderr.replace("\n", "")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [rec["round"] for rec in records] == [1, 2, 3]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["stopped_by"].startswith("error") and summary["rounds_completed"] >= 3
    assert (folder / "model.safetensors").stat().st_size > 0
