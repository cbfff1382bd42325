"""What every benchmark's results file records about where it was measured, and writing it."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()


def provenance() -> dict[str, Any]:
    """Date, commit, whether src/ had uncommitted changes, and the machine."""
    import torch

    return {"date": datetime.date.today().isoformat(), "commit": git("rev-parse", "--short", "HEAD"),
            "src_dirty": bool(git("status", "--porcelain", "src")),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}}


def write_results(name: str, results: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return out
