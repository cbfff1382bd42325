"""The ``cohort`` command: ``cohort run [CONFIG.toml] [--set key=value ...]``, ``cohort run --resume RUN``
and ``cohort plot RUN ...``."""

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
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        folder = getattr(args, "run_folder", None)
        kept = (f"; {folder} holds every finished round, the model and a summary (resume with "
                f"`cohort run --resume {folder}`)" if folder else "; no run folder had been written yet")
        err.print(f"{'interrupted' if isinstance(e, KeyboardInterrupt) else 'terminated (SIGTERM)'}{kept}",
                  highlight=False, markup=False, soft_wrap=True)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from cohort.config import load_config
    from cohort.experiment import build, run
    from cohort.tracking import ConsoleProgress

    from pathlib import Path

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.dir={_toml_string(args.data_dir)}")
    if args.out:
        overrides.append(f"output.dir={_toml_string(args.out)}")
    resume = args.resume
    if resume is not None:
        if args.config:
            raise ConfigError("--resume continues a run with the config in its folder; give no CONFIG.toml with it")
        if not Path(resume, "config.toml").is_file():
            raise ConfigError(f"--resume {resume!r}: not a run folder (no config.toml in it); give a folder "
                              "written by `cohort run`")
        config = load_config(Path(resume, "config.toml"), overrides)
        source = f"{resume} (resumed)"
    else:
        config = load_config(args.config, overrides)
        demo = not args.config and not any(o.split("=", 1)[0].strip().startswith(("data.", "model.")) for o in args.set)
        source = args.config or ("the embedded demo (hospitals, breast cancer, logistic regression)" if demo
                                 else "the embedded demo's settings with your --set overrides")
    console = Console()
    console.print(f"cohort: {config.name} from {source}", highlight=False, markup=False, soft_wrap=True)
    experiment = build(config)  # every check happens here, before training
    console.print(f"model {config.model.name}, {config.server.algorithm} ({config.server.policy}), up to "
                  f"{config.rounds} rounds; {experiment.num_clients} clients, {experiment.cohort_size} per round:",
                  highlight=False, soft_wrap=True)
    for line in experiment.describe_clients().splitlines()[1:3]:  # sizes, and labels per client
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    progress = None if args.quiet else ConsoleProgress(config.rounds, console=console,
                                                      bar=config.output.progress and not args.no_progress)
    result = run(config, progress=progress, experiment=experiment, resume=resume,
                 on_folder=lambda path: setattr(args, "run_folder", path))
    best, last = result.summary["best"], result.summary["last"]
    if best:
        console.print(f"best {best['metric']} {best['value']:.4f} at round {best['round']}, last {last['value']:.4f} "
                      f"at round {last['round']}; stopped by {result.stopped_by} after {result.state.round} rounds",
                      highlight=False, soft_wrap=True)
    console.print(f"run folder: {result.folder}", highlight=False, markup=False, soft_wrap=True)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cohort.tracking import plot_runs

    import warnings

    out = args.output or str(Path(args.runs[0]) / "curves.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = plot_runs(args.runs, out, metrics=args.metric or ("accuracy", "loss"))
    for w in caught:  # damaged lines skipped: one plain line each, no source excerpt
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parser() -> argparse.ArgumentParser:
    from cohort import __version__

    parser = argparse.ArgumentParser(prog="cohort", description="Federated learning: simulate and run federations.")
    parser.add_argument("--version", action="version", version=f"cohort {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment from a TOML config (none: the built-in demo)")
    run.add_argument("config", nargs="?", help="TOML experiment config; see examples/")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting, e.g. --set rounds=5 --set server.fraction=0.1 (repeatable)")
    run.add_argument("--data-dir", help="folder of downloadable datasets (default: $COHORT_DATA_DIR, else ~/.cache/cohort/data)")
    run.add_argument("--out", help="folder to write the run folder in (default: output.dir, 'runs')")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run from its latest checkpoint")
    run.add_argument("--quiet", action="store_true", help="print no per-round lines")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.set_defaults(func=_run)

    plot = sub.add_parser("plot", help="plot the curves of one or more runs, overlaid (PNG, PDF, SVG, ...)")
    plot.add_argument("runs", nargs="+", help="run folders written by `cohort run`")
    plot.add_argument("--metric", action="append", help="metric to plot (repeatable; default: accuracy and loss)")
    plot.add_argument("-o", "--output", help="PNG file (default: curves.png in the first run folder)")
    plot.set_defaults(func=_plot)
    return parser


if __name__ == "__main__":
    sys.exit(main())
