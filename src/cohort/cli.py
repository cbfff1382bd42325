"""The ``cohort`` command: ``cohort run [CONFIG.toml] [--set key=value ...]``, ``cohort run --resume RUN``,
``cohort plot``, ``cohort view`` and ``cohort report``; the deployment commands are in :mod:`cohort.cli_deploy`."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from cohort.cli_run import run_command
from cohort.core.errors import CohortError, ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    from cohort.experiment import Terminated

    parser = _parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):  # kill, docker stop, systemd, Slurm: stop like Ctrl-C, keep the rounds
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return args.func(args)
    except CohortError as e:  # a user's mistake or a failed run: the message, no traceback
        folder = getattr(args, "run_folder", None)
        hint = ""
        if folder and args.command == "server":  # say how to go on (clients told it is pausing wait for it)
            from cohort.cli_lifecycle import resume_command
            from cohort.core.errors import RoundFailed

            waiting = "" if isinstance(e, RoundFailed) else "the clients wait for the server: "
            hint = f" ({waiting}resume with `{resume_command(args, folder)}`)"
        err.print(f"[bold red]error:[/] {escape(str(e) + hint)}", highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        folder = getattr(args, "run_folder", None)
        checkpoints = Path(folder, "checkpoints") if folder else None
        if folder and checkpoints.is_dir() and any(checkpoints.iterdir()):
            from cohort.cli_lifecycle import resume_command

            clients = "; its clients were told it is pausing and wait" if args.command == "server" else ""
            kept = (f"; {folder} holds every finished round, the model and a summary{clients} (resume with "
                    f"`{resume_command(args, folder)}`)")
        elif folder:  # nothing to resume from: say so, rather than offer a resume that will be refused
            kept = f"; no round had finished, so {folder} holds nothing to resume from: run the command again"
        else:
            kept = "; no run folder had been written yet"
        err.print(f"{'interrupted' if isinstance(e, KeyboardInterrupt) else 'terminated (SIGTERM)'}{kept}",
                  highlight=False, markup=False, soft_wrap=True)
        return _leave(130 if isinstance(e, KeyboardInterrupt) else 143)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _leave(code: int, grace_s: float = 10.0) -> int:
    """After an interrupt: ``code``, once the threads still running have ended. An interrupt that landed
    inside concurrent.futures' machinery can leave its manager thread waiting for ever, and Python's exit
    joins it without a timeout; everything is written by now (the run folder, the model, the summary),
    so after ``grace_s`` the process leaves without waiting for such a thread."""
    import os
    import threading
    import time

    deadline = time.monotonic() + grace_s
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
    return code


def _view(args: argparse.Namespace) -> int:
    """``cohort view RUN_DIR``: the live view of a run folder, until Ctrl-C."""
    from pathlib import Path

    from cohort.tracking.view import ViewServer

    if not Path(args.run, "config.toml").is_file():
        raise ConfigError(f"{args.run!r} is not a run folder (no config.toml in it); give a folder written by "
                          "`cohort run` or `cohort server`")
    view = ViewServer(args.run, args.address, args.token)
    print(f"live view of {args.run}: {view.url} (Ctrl-C stops it)", flush=True)
    view.serve()
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cohort.tracking import plot_runs

    import warnings

    if args.per_site:
        from cohort.tracking.report import plot_sites

        if len(args.runs) != 1 or (args.metric and len(args.metric) != 1):
            raise ConfigError("--per-site draws one run's clients: give one run folder and at most one --metric")
        path = plot_sites(args.runs[0], args.output or str(Path(args.runs[0]) / "sites.png"),
                          (args.metric or ["accuracy"])[0])
        print(f"wrote {path}")
        return 0
    from cohort.tracking.plot import choose_metrics

    out = args.output or str(Path(args.runs[0]) / "curves.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = args.metric or choose_metrics(args.runs)  # none named: the metrics the runs have
        path = plot_runs(args.runs, out, metrics=metrics)
    for message in dict.fromkeys(str(w.message) for w in caught):  # damaged lines skipped: one plain line each
        print(f"warning: {message}", file=sys.stderr)  # (the runs were read twice: each said once)
    if not args.metric and metrics != ["accuracy", "loss"]:
        print(f"plotted {', '.join(metrics)}: the metrics these runs report (choose others with --metric)")
    print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from cohort.tracking.report import format_site_table

    print(format_site_table(args.run))
    return 0


def _parser() -> argparse.ArgumentParser:
    from cohort import __version__

    parser = argparse.ArgumentParser(prog="cohort", description="Federated learning: simulate and run federations.")
    parser.add_argument("--version", action="version", version=f"cohort {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def run_options(p: argparse.ArgumentParser, resume_help: str) -> None:
        """What `cohort run` and `cohort server` share: the config and where the run folder goes."""
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set rounds=5 --set server.fraction=0.1 (repeatable)")
        p.add_argument("--data-dir", help="folder of downloadable datasets (default: $COHORT_DATA_DIR, else ~/.cache/cohort/data)")
        p.add_argument("--out", help="folder to write the run folder in (default: output.dir, 'runs')")
        p.add_argument("--resume", metavar="RUN_DIR", help=resume_help)
        p.add_argument("--quiet", action="store_true", help="print no per-round lines")
        p.add_argument("--no-progress", action="store_true", help="no live progress bar")
        p.add_argument("--view", action="store_true", help="serve a live web view of the run while it goes on")
        p.add_argument("--view-address", default="127.0.0.1:8765", metavar="HOST:PORT",
                       help="where --view listens (default 127.0.0.1:8765; port 0: any free one); another host than "
                            "loopback needs a token")
        p.add_argument("--view-token", help="the token a non-local --view-address asks for (default: a random one, printed)")

    run = sub.add_parser("run", help="run an experiment from a TOML config (none: the built-in demo) or an app")
    run.add_argument("config", nargs="?", help="TOML experiment config; see examples/")
    run.add_argument("--app", help="module:attribute of a cohort.App (your clients, initial model, evaluation, "
                                   "per-round configs), run in simulation; a CONFIG.toml and --set combine with it")
    run_options(run, "continue a stopped or killed run from its latest checkpoint")
    run.set_defaults(func=run_command)

    from cohort.cli_deploy import add_parsers

    add_parsers(sub, run_options)  # server, client
    from cohort.cli_identity import add_parsers as identity_parsers

    identity_parsers(sub)  # certs, keys
    from cohort.cli_governance import add_parsers as governance_parsers

    governance_parsers(sub)  # audit

    plot = sub.add_parser("plot", help="plot the curves of one or more runs, overlaid (PNG, PDF, SVG, ...)")
    plot.add_argument("runs", nargs="+", help="run folders written by `cohort run`")
    plot.add_argument("--metric", action="append", help="metric to plot (repeatable; default: accuracy and loss, else what the runs report, e.g. federated_accuracy and federated_loss)")
    plot.add_argument("-o", "--output", help="PNG file (default: curves.png, or sites.png, in the first run folder)")
    plot.add_argument("--per-site", action="store_true",
                      help="one run: a line per client of its held-out metric over the rounds (from clients.jsonl)")
    plot.set_defaults(func=_plot)

    view = sub.add_parser("view", help="serve the live web view of a run folder (finished, or running in another process)")
    view.add_argument("run", help="a run folder written by `cohort run` or `cohort server`")
    view.add_argument("--address", default="127.0.0.1:8765", metavar="HOST:PORT",
                      help="where to listen (default 127.0.0.1:8765; port 0: any free one); another host than loopback needs a token")
    view.add_argument("--token", help="the token a non-local address asks for (default: a random one, printed)")
    view.set_defaults(func=_view)

    report = sub.add_parser("report", help="print the per-client table of a run's final model (from clients.jsonl)")
    report.add_argument("run", help="a run folder written by `cohort run` or `cohort server`")
    report.set_defaults(func=_report)
    return parser


if __name__ == "__main__":
    sys.exit(main())
