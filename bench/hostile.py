"""One hostile client against a real deployment, attack by attack, under today's defaults and under the
old ones (no update bound, no round deadline, a 2 GiB reply limit).

Each cell is a real `cohort server` on 127.0.0.1 with TLS and client keys, three honest `cohort client`
processes of the embedded demo (four clients' split, breast cancer, logistic regression) and one
evil one (tests/evil_app.py) that makes the same attack in every round from round 2 on. A cell
reports whether the run finished (or stalled: killed at --cap-s), its final centralized accuracy and
test loss, the rounds it completed, and the server's peak resident memory (VmHWM, read from /proc
while it runs).

Run: .venv/bin/python bench/hostile.py [--rounds 8] [--cap-s 150] [--attacks ...] [--merge]
Writes bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
ATTACKS = ["none", "finite 3e38", "x10", "x1e6", "sign flip", "nan", "never replies", "slow drip",
           "oversize announcement"]
OLD = ["--set", "server.norm_bound=0", "--set", "server.round_timeout_s=0", "--set", "server.straggler_factor=0",
       "--max-update-mb", "2048"]  # the settings before issue 28 (the absurd-model guard cannot be turned off)


def cohort(*args: str) -> list[str]:
    return [sys.executable, "-m", "cohort.cli", *args]


def peak_of(pid: int, box: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    box["peak_mb"] = max(box.get("peak_mb", 0.0), int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            return
        stop.wait(0.05)


def secrets(root: Path, env: dict) -> tuple[Path, Path, Path]:
    certs, keys, registry = root / "certs", root / "keys", root / "registry.sqlite"
    subprocess.run(cohort("certs", "--out", str(certs), "--host", "127.0.0.1"), check=True, capture_output=True, env=env)
    subprocess.run(cohort("keys", "new", "--out", str(keys), *[a for c in range(4) for a in ("--id", str(c))]),
                   check=True, capture_output=True, env=env)
    for c in range(4):
        subprocess.run(cohort("keys", "allow", "--registry", str(registry), "--id", str(c), "--public",
                              str(keys / f"client-{c}.pub")), check=True, capture_output=True, env=env)
    return certs, keys, registry


def cell(attack: str, old: bool, rounds: int, cap_s: float, root: Path, keys_of, env: dict) -> dict:
    certs, keys, registry = keys_of
    out = Path(tempfile.mkdtemp(dir=root))
    name = "run"
    sets = ["data.num_clients=4", f"rounds={rounds}", f"name={name}"]
    server = subprocess.Popen(cohort("server", "--address", "127.0.0.1:0", "--out", str(out), "--no-progress", "--quiet",
                                     "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                                     "--registry", str(registry), *(OLD if old else []),
                                     *[a for s in sets for a in ("--set", s)]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS)
    procs, box, stop = [server], {}, threading.Event()
    watcher = threading.Thread(target=peak_of, args=(server.pid, box, stop), daemon=True)
    watcher.start()
    started = time.monotonic()
    status = "finished"
    try:
        address = ""
        while not address:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                raise RuntimeError(server.stderr.read())
            if "listening on " in line:
                address = line.split("listening on ")[1].split(";")[0]
        tls = ["--tls-ca", str(certs / "ca.pem")]
        for c in range(3):
            procs.append(subprocess.Popen(cohort("client", "--server", address, "--id", str(c), *tls, "--key",
                                                 str(keys / f"client-{c}.key"), *[a for s in sets[:1] for a in ("--set", s)]),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=TESTS))
        evil_env = {**env, "EVIL_ATTACK": attack}  # "none": an honest client of the same app
        procs.append(subprocess.Popen(cohort("client", "--server", address, "--id", "3", *tls, "--key",
                                             str(keys / "client-3.key"), "--app", "evil_app:client_fn"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=evil_env, cwd=TESTS))
        try:
            server.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            status = f"stalled (killed after {cap_s:.0f} s)"
    finally:
        seconds = time.monotonic() - started
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        stop.set()
        watcher.join(5)
    records = []
    for folder in out.glob(f"{name}-*"):
        metrics = folder / "metrics.jsonl"
        if metrics.exists():
            records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    last = records[-1] if records else {}
    bounded = sum(int(r.get("updates_bounded", 0)) for r in records)
    failed = sum(int(r.get("clients_failed", 0)) for r in records)
    return {"attack": attack, "defaults": "old" if old else "today", "status": status,
            "rounds_completed": len(records), "accuracy": last.get("accuracy"), "loss": last.get("loss"),
            "updates_bounded": bounded, "client_failures": failed, "seconds": round(seconds, 1),
            "server_peak_mb": round(box.get("peak_mb", float("nan")), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cap-s", type=float, default=150.0)
    parser.add_argument("--attacks", nargs="*", default=ATTACKS)
    parser.add_argument("--out", default="hostile")
    parser.add_argument("--merge", action="store_true", help="keep the results file's other cells")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys_of = secrets(root, env)
        for attack in args.attacks:
            for old in (False, True):
                row = cell(attack, old, args.rounds, args.cap_s, root, keys_of, env)
                rows.append(row)
                acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
                loss = "-" if row["loss"] is None else f"{row['loss']:.4g}"
                print(f"{attack:>22} {row['defaults']:>5}: {row['status']:<28} rounds {row['rounds_completed']:>2}  "
                      f"acc {acc}  loss {loss}  bounded {row['updates_bounded']:>2}  failures {row['client_failures']:>2}  "
                      f"server peak {row['server_peak_mb']:.0f} MB  {row['seconds']:.0f} s", flush=True)
    path = ROOT / "bench" / "results" / f"{args.out}.json"
    if args.merge and path.exists():  # replace the cells measured again, keep the others
        again = {(r["attack"], r["defaults"]) for r in rows}
        kept = [r for r in json.loads(path.read_text())["cells"] if (r["attack"], r["defaults"]) not in again]
        rows = sorted(kept + rows, key=lambda r: (ATTACKS.index(r["attack"]), r["defaults"] != "today"))
    path.write_text(json.dumps({"rounds": args.rounds, "cap_s": args.cap_s, "cells": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
