"""The run path that ``cohort run`` and ``cohort server`` share: the config (and app) a command names,
the experiment built from them, and the run itself with its console lines, run folder and live view.
``cohort.cli`` and ``cohort.cli_deploy`` both stand on it; it imports neither."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from cohort.core.errors import ConfigError

APP_FILE = "app.txt"  # a run folder's record of the app it runs (module:attribute), for --resume


def toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load(args: argparse.Namespace):
    """The config a run, server or client command names, with --set, --data-dir and --out applied, the
    app's own defaults under it (--app); returns (config, where it came from, the app or None)."""
    from cohort.config import load_config

    overrides = list(args.set)
    if getattr(args, "data_dir", None):
        overrides.append(f"data.dir={toml_string(args.data_dir)}")
    if getattr(args, "out", None):
        overrides.append(f"output.dir={toml_string(args.out)}")
    resume = getattr(args, "resume", None)
    spec = getattr(args, "app", None)
    if resume is not None:
        if args.config:
            raise ConfigError("--resume continues a run with the config in its folder; give no CONFIG.toml with it")
        if not Path(resume, "config.toml").is_file():
            raise ConfigError(f"--resume {resume!r}: not a run folder (no config.toml in it); give a folder "
                              "written by `cohort run`")
        kept = Path(resume, APP_FILE)
        if kept.is_file():
            recorded = kept.read_text().strip()
            if spec and spec != recorded:
                raise ConfigError(f"--resume {resume!r} ran the app {recorded!r}; --app {spec!r} differs (leave --app out)")
            spec = args.app = recorded
        app = _app(spec)
        return load_config(Path(resume, "config.toml"), overrides), f"{resume} (resumed)", app
    app = _app(spec)
    if app is not None:
        return app.load_config(args.config, overrides), f"the app {spec}" + (f" with {args.config}" if args.config else ""), app
    config = load_config(args.config, overrides)
    demo = not args.config and not any(o.split("=", 1)[0].strip().startswith(("data.", "model.")) for o in args.set)
    source = args.config or ("the embedded demo (hospitals, breast cancer, logistic regression)" if demo
                             else "the embedded demo's settings with your --set overrides")
    return config, source, None


def _app(spec: str | None):
    if not spec:
        return None
    from cohort.app import load_app

    return load_app(spec)


def experiment_of(config, app, *, deployed_clients: int | None = None, sites=None):
    """The experiment of a config, or of an app under it; every check happens here, before training."""
    if app is None:
        from cohort.experiment import build

        return build(config, sites=sites)
    if sites is not None:
        raise ConfigError("an app's server with a site federation config (data.dataset = 'csv' with a natural partition): "
                          "run the sites from the config alone, without --app")
    from cohort.app import build_app

    return build_app(config, app, deployed_clients=deployed_clients)


def run_command(args: argparse.Namespace, start: Callable | None = None) -> int:
    """``cohort run`` (``start`` None: a simulation) or ``cohort server`` (``start(config, app, console)``
    returns the channel to its clients, the sites' agreement or None, and the experiment)."""
    from cohort.experiment import run
    from cohort.tracking import ConsoleProgress

    config, source, app = load(args)
    console = Console()
    console.print(f"cohort: {config.name} from {source}", highlight=False, markup=False, soft_wrap=True)
    channel = sites = None
    if start is not None:  # cohort server: the experiment and its clients' channel, in the order the config needs
        channel, sites, experiment = start(config, app, console)
    else:
        experiment = experiment_of(config, app)  # every check happens here, before training
    if app is not None and experiment.app.arrays is not None:
        model = f"the app's ({args.app})"
    else:
        model = config.model.factory or config.model.name
    framework = f" ({config.model.framework})" if config.model.framework != "torch" and app is None else ""
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
            Path(path, "sites.json").write_text(sites.to_json())
        if app is not None:
            Path(path, APP_FILE).write_text(args.app + "\n")
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
