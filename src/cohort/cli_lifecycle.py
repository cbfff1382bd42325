"""What `cohort server` adds to a run for a deployment with a hostile participant, and how it stops:
its round deadline (``round_deadline``), the largest update it accepts (``limit_updates``), what it
tells its clients when it stops (``goodbye_for``: the run has ended, or it is pausing), and the
command that resumes it (``resume_command``)."""

from __future__ import annotations

import argparse

ROUND_TIMEOUT_S = 600.0  # a deployment's round deadline when server.round_timeout_s is unset
PAUSING = "pausing:"  # a goodbye starting so: the server stops to be resumed (cohort.channel.grpc.server.PAUSING)
BEFORE_THE_RUN = "the server stopped before the run began"  # nothing to resume: its clients stop too


def limit_updates(args: argparse.Namespace, channel, experiment, console) -> None:
    """The largest result accepted from a client: --max-update-mb, else derived from the model (the
    groups the algorithm folds, as the run's compression encodes them; see channel/grpc/limits.py)."""
    from cohort.channel.grpc.limits import describe, update_limit
    from cohort.core.types import MODEL

    config = experiment.config
    groups = experiment.initial_state().groups
    derived = update_limit(groups, experiment.algorithm.aggregators, compression=config.compression.kind,
                           topk_fraction=config.compression.topk_fraction,
                           secure_group=MODEL if config.secagg.mode != "none" else None)
    if args.max_update_mb:
        how = "--max-update-mb"
        if channel.max_update_bytes < derived:
            how += f"; WARNING: below the {describe(derived)} an update of this model may take, so such updates are refused"
    else:
        channel.set_max_update_bytes(derived)
        how = "from the model; --max-update-mb overrides"
    console.print(f"largest update accepted from a client: {describe(channel.max_update_bytes)} ({how})",
                  highlight=False, markup=False, soft_wrap=True)


def round_deadline(args: argparse.Namespace, config) -> str:
    """The round deadline of this server, applied to the config (``config``: as the run will load it; a
    resumed run: its folder's) when it leaves it unset; says which."""
    timeout = config.server.round_timeout_s
    s = config.server
    stragglers = (f"; once half the cohort answered in t s, the rest get max({s.straggler_min_s:g} s, "
                  f"{s.straggler_factor:g} t) more (server.straggler_factor, straggler_min_s)" if s.straggler_factor
                  else "; no straggler deadline (server.straggler_factor = 0)")
    if timeout is None and not args.resume:
        args.set = [*args.set, f"server.round_timeout_s={ROUND_TIMEOUT_S}"]  # the run's config records it
        return (f"round deadline {ROUND_TIMEOUT_S:.0f} s (cohort server's default; set server.round_timeout_s for "
                "another, 0 for none)" + stragglers)
    if not timeout:
        return ("WARNING: rounds have NO fixed deadline (server.round_timeout_s = 0" + (", or unset in a run started "
                "by `cohort run`" if timeout is None else "") + ")" + (stragglers if s.straggler_factor else
                ": a client that never answers holds every round"))
    return f"round deadline {timeout:g} s (server.round_timeout_s)" + stragglers


def goodbye_for(args: argparse.Namespace):
    """What the clients are told when the server stops: that the run has ended only once its summary,
    written by this server, says it stopped for good (rounds, target, failed rounds, privacy budget);
    after a signal or an error (a full disk, ...) once the run folder exists, that the server is
    pausing, so that they wait for a resumed server (`cohort server --resume`). Before the run folder
    exists there is nothing to resume: they are told the server stopped before the run began."""
    import json
    import os
    from pathlib import Path

    def signature(path: Path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    before = signature(Path(args.resume, "summary.json")) if args.resume else None  # a summary of an earlier server

    def goodbye() -> str:
        from cohort.channel.grpc.server import ENDED

        folder = getattr(args, "run_folder", None)
        if folder is None:  # no run folder: nothing a resume could continue
            return BEFORE_THE_RUN
        path = Path(folder, "summary.json")
        now = signature(path)
        if now is None or now == before:
            return f"{PAUSING} the server stopped before writing its summary"
        try:
            stopped_by = str(json.loads(path.read_text())["stopped_by"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"{PAUSING} the server stopped (its summary cannot be read)"
        if stopped_by in ("interrupted", "terminated") or stopped_by.startswith("error"):
            return f"{PAUSING} the server stopped ({stopped_by[:300]})"
        return ENDED

    return goodbye


def resume_command(args: argparse.Namespace, folder) -> str:
    """The command that resumes this run: `cohort server --resume RUN_DIR` with this server's own flags
    (its address, TLS, registry, ...), or `cohort run --resume RUN_DIR` for a simulation."""
    import shlex

    if getattr(args, "command", None) != "server":
        return f"cohort run --resume {shlex.quote(str(folder))}"
    words = ["cohort", "server", "--resume", str(folder), "--address", getattr(args, "bound_address", args.address)]
    for flag, default in ( ("tls_cert", None), ("tls_key", None), ("tls_client_ca", None),
                          ("registry", None), ("bulk_port", 0), ("min_clients", None), ("wait_s", 300.0),
                          ("chunk_mb", 4), ("max_update_mb", 0), ("heartbeat_s", 5.0), ("data_dir", None)):
        value = getattr(args, flag, default)
        if value is not None and value != default:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(w) for w in words)
