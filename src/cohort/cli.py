"""The ``cohort`` command: ``cohort run [CONFIG.toml] [--set key=value ...]``, ``cohort run --resume RUN``,
``cohort plot``, ``cohort view`` and ``cohort report``; the deployment commands are in :mod:`cohort.cli_deploy`."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

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
        if folder:
            from cohort.cli_lifecycle import resume_command

            clients = "; its clients were told it is pausing and wait" if args.command == "server" else ""
            kept = (f"; {folder} holds every finished round, the model and a summary{clients} (resume with "
                    f"`{resume_command(args, folder)}`)")
        else:
            kept = "; no run folder had been written yet"
        err.print(f"{'interrupted' if isinstance(e, KeyboardInterrupt) else 'terminated (SIGTERM)'}{kept}",
                  highlight=False, markup=False, soft_wrap=True)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load(args: argparse.Namespace):
    """The config a run, server or client command names, with --set, --data-dir and --out applied."""
    from pathlib import Path

    from cohort.config import load_config

    overrides = list(args.set)
    if getattr(args, "data_dir", None):
        overrides.append(f"data.dir={_toml_string(args.data_dir)}")
    if getattr(args, "out", None):
        overrides.append(f"output.dir={_toml_string(args.out)}")
    resume = getattr(args, "resume", None)
    if resume is not None:
        if args.config:
            raise ConfigError("--resume continues a run with the config in its folder; give no CONFIG.toml with it")
        if not Path(resume, "config.toml").is_file():
            raise ConfigError(f"--resume {resume!r}: not a run folder (no config.toml in it); give a folder "
                              "written by `cohort run`")
        return load_config(Path(resume, "config.toml"), overrides), f"{resume} (resumed)"
    config = load_config(args.config, overrides)
    demo = not args.config and not any(o.split("=", 1)[0].strip().startswith(("data.", "model.")) for o in args.set)
    source = args.config or ("the embedded demo (hospitals, breast cancer, logistic regression)" if demo
                             else "the embedded demo's settings with your --set overrides")
    return config, source


def _run(args: argparse.Namespace, channel_for=None) -> int:
    from cohort.experiment import build, run
    from cohort.tracking import ConsoleProgress

    config, source = _load(args)
    console = Console()
    console.print(f"cohort: {config.name} from {source}", highlight=False, markup=False, soft_wrap=True)
    channel = sites = None
    if channel_for is not None:  # cohort server: the experiment and its clients' channel, in the order the config needs
        from cohort.cli_deploy import sites_first

        channel, sites, experiment = sites_first(args, config, console, channel_for)
    else:
        experiment = build(config)  # every check happens here, before training
    model = config.model.factory or config.model.name
    framework = f" ({config.model.framework})" if config.model.framework != "torch" else ""
    console.print(f"model {model}{framework}, {config.server.algorithm} ({config.server.policy}), up to "
                  f"{config.rounds} rounds; {experiment.num_clients} clients, {experiment.cohort_size} per round:",
                  highlight=False, soft_wrap=True)
    for line in experiment.describe_clients().splitlines()[1:3]:  # sizes, and labels per client
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    from cohort.recipe import protections

    console.print(protections(config), highlight=False, markup=False, soft_wrap=True)
    progress = None if args.quiet else ConsoleProgress(config.rounds, console=console,
                                                      bar=config.output.progress and not args.no_progress)
    view = None
    if args.view:  # checked now, served once the run folder exists
        from cohort.tracking.view.app import check_token, parse_address

        check_token(parse_address(args.view_address)[0], args.view_token)

    def on_folder(path):
        nonlocal view
        args.run_folder = path
        if sites is not None:  # what the sites agreed, for a resume and for the record
            from pathlib import Path

            Path(path, "sites.json").write_text(sites.to_json())
        if hasattr(channel, "attach_folder"):  # the server's run log
            channel.attach_folder(path)
        if args.view:
            from cohort.tracking.view import ViewServer

            view = ViewServer(path, args.view_address, args.view_token).start()
            console.print(f"live view: {view.url}", highlight=False, markup=False, soft_wrap=True)
            console.file.flush()

    try:
        result = run(config, progress=progress, experiment=experiment, resume=args.resume, on_folder=on_folder,
                     channel=channel)
        best, last = result.summary["best"], result.summary["last"]
        if best:
            console.print(f"best {best['metric']} {best['value']:.4f} at round {best['round']}, last {last['value']:.4f} "
                          f"at round {last['round']}; stopped by {result.stopped_by} after {result.state.round} rounds",
                          highlight=False, soft_wrap=True)
        console.print(f"run folder: {result.folder}", highlight=False, markup=False, soft_wrap=True)
        if view is not None and sys.stdin.isatty():  # someone is watching: the finished run stays on view
            import time

            console.print(f"the live view stays at {view.url} until Ctrl-C", highlight=False, markup=False, soft_wrap=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        if view is not None:
            view.stop(grace_s=1.5)  # open pages get the final state first
    return 0


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
    out = args.output or str(Path(args.runs[0]) / "curves.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = plot_runs(args.runs, out, metrics=args.metric or ("accuracy", "loss"))
    for w in caught:  # damaged lines skipped: one plain line each, no source excerpt
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from cohort.tracking.report import format_site_table

    print(format_site_table(args.run))
    return 0


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


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

    run = sub.add_parser("run", help="run an experiment from a TOML config (none: the built-in demo)")
    run.add_argument("config", nargs="?", help="TOML experiment config; see examples/")
    run_options(run, "continue a stopped or killed run from its latest checkpoint")
    run.set_defaults(func=_run)

    from cohort.cli_deploy import add_parsers

    add_parsers(sub, run_options)  # server, client, certs, keys

    plot = sub.add_parser("plot", help="plot the curves of one or more runs, overlaid (PNG, PDF, SVG, ...)")
    plot.add_argument("runs", nargs="+", help="run folders written by `cohort run`")
    plot.add_argument("--metric", action="append", help="metric to plot (repeatable; default: accuracy and loss)")
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
