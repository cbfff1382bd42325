"""The ``cohort`` command: ``cohort run [CONFIG.toml] [--set key=value ...]`` and ``cohort plot RUN ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from cohort.core.errors import CohortError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        return args.func(args)
    except CohortError as e:  # a user's mistake or a failed run: the message, no traceback
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; the run folder holds everything up to the last finished round")
        return 130


def _run(args: argparse.Namespace) -> int:
    from cohort.config import load_config
    from cohort.experiment import build, run
    from cohort.tracking import ConsoleProgress

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.dir={_toml_string(args.data_dir)}")
    if args.out:
        overrides.append(f"output.dir={_toml_string(args.out)}")
    config = load_config(args.config, overrides)
    console = Console()
    source = args.config or "the embedded demo (hospitals, breast cancer, logistic regression)"
    console.print(f"cohort: {config.name} from {source}", highlight=False, markup=False, soft_wrap=True)
    experiment = build(config)  # every check happens here, before training
    console.print(f"model {config.model.name}, {config.server.algorithm}, up to {config.rounds} rounds; "
                  f"{experiment.num_clients} clients:", highlight=False, soft_wrap=True)
    for line in experiment.describe_clients().splitlines()[1:3]:  # sizes, and labels per client
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    progress = None if args.quiet else ConsoleProgress(config.rounds, console=console,
                                                      bar=config.output.progress and not args.no_progress)
    result = run(config, progress=progress, experiment=experiment)
    best = result.summary["best"]
    if best:
        console.print(f"best {best['metric']} {best['value']:.4f} at round {best['round']}; "
                      f"stopped by {result.stopped_by} after {result.state.round} rounds", highlight=False, soft_wrap=True)
    console.print(f"run folder: {result.folder}", highlight=False, markup=False, soft_wrap=True)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cohort.tracking import plot_runs

    out = args.output or str(Path(args.runs[0]) / "curves.png")
    path = plot_runs(args.runs, out, metrics=args.metric or ("accuracy", "loss"))
    print(f"wrote {path}")
    return 0


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohort", description="Federated learning: simulate and run federations.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment from a TOML config (none: the built-in demo)")
    run.add_argument("config", nargs="?", help="TOML experiment config; see examples/")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting, e.g. --set rounds=5 --set server.fraction=0.1 (repeatable)")
    run.add_argument("--data-dir", help="folder of downloadable datasets (default: $COHORT_DATA_DIR, else ~/.cache/cohort/data)")
    run.add_argument("--out", help="folder to write the run folder in (default: output.dir, 'runs')")
    run.add_argument("--quiet", action="store_true", help="print no per-round lines")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.set_defaults(func=_run)

    plot = sub.add_parser("plot", help="plot the curves of one or more runs, overlaid, to PNG")
    plot.add_argument("runs", nargs="+", help="run folders written by `cohort run`")
    plot.add_argument("--metric", action="append", help="metric to plot (repeatable; default: accuracy and loss)")
    plot.add_argument("-o", "--output", help="PNG file (default: curves.png in the first run folder)")
    plot.set_defaults(func=_plot)
    return parser


if __name__ == "__main__":
    sys.exit(main())
