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
    from cohort.client.site import is_site_federation, site_count

    if channel_for is not None and is_site_federation(config):  # the sites hold the rows: agree the data first
        from pathlib import Path

        from cohort.data.exchange import Agreement, agree

        channel = channel_for(config, site_count(config.data), console)
        try:
            kept = Path(args.resume, "sites.json") if args.resume else None
            if kept is not None and kept.is_file():  # a resumed run keeps the preprocessing it was trained with
                sites = Agreement.from_json(kept.read_text(), str(kept))
                console.print(f"the sites' agreement from {kept}", highlight=False, markup=False, soft_wrap=True)
            else:
                console.print("agreeing the data with the sites (schema, statistics)", highlight=False, soft_wrap=True)
                secure = config.secagg.settings() if config.secagg.mode != "none" else None  # then only sums reach the server
                sites = agree(channel, site_count(config.data), config.data, config.server.round_timeout_s or 600.0,
                              secure=secure, seed=config.seed)
            channel.message_config["site_data"] = sites.message_config()
            experiment = build(config, sites=sites)
        except BaseException:
            channel.close("the server stopped before the run began")
            raise
    else:
        experiment = build(config)  # every check happens here, before training
    model = config.model.factory or config.model.name
    framework = f" ({config.model.framework})" if config.model.framework != "torch" else ""
    console.print(f"model {model}{framework}, {config.server.algorithm} ({config.server.policy}), up to "
                  f"{config.rounds} rounds; {experiment.num_clients} clients, {experiment.cohort_size} per round:",
                  highlight=False, soft_wrap=True)
    for line in experiment.describe_clients().splitlines()[1:3]:  # sizes, and labels per client
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if channel_for is not None and channel is None:
        channel = channel_for(config, experiment.num_clients, console)
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


def _server(args: argparse.Namespace) -> int:
    """``cohort server``: the same run as ``cohort run``, with clients that are processes dialing in."""
    from cohort.channel.grpc.server import GrpcChannel
    from cohort.recipe import algorithm_settings

    import math

    from cohort.core.limits import MAX_TIMEOUT_S

    checks = (("--wait-s", args.wait_s, 0 < args.wait_s <= MAX_TIMEOUT_S, "seconds in (0, one week]"),
              ("--chunk-mb", args.chunk_mb, 1 <= args.chunk_mb <= 64, "1 to 64"),
              ("--max-update-mb", args.max_update_mb, 1 <= args.max_update_mb <= 2**20, "1 to 1048576"),
              ("--min-clients", args.min_clients, args.min_clients >= 0, "0 (all of data.num_clients) or more"),
              ("--heartbeat-s", args.heartbeat_s, 0.05 <= args.heartbeat_s <= 3600, "seconds from 0.05 to 3600"),
              ("--bulk-port", args.bulk_port, -1 <= args.bulk_port <= 65535,
               "a port for the bulk connections (0: any free one; -1: none, everything on the gRPC stream)"))
    for flag, value, ok, expected in checks:
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{flag} is {value!r}; expected {expected}")

    def channel_for(config, num_clients, console):
        if args.min_clients > num_clients:
            raise ConfigError(f"--min-clients is {args.min_clients} but the config has {num_clients} clients "
                              "(data.num_clients)")
        # each connected client holds one of the server's threads for its stream
        from cohort.channel.grpc.certs import read
        from cohort.channel.grpc.registry import Registry

        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: the server's certificate (chain) and its private key")
        tls = (read(args.tls_cert, "--tls-cert"), read(args.tls_key, "--tls-key")) if args.tls_cert else None
        if args.tls_client_ca and not tls:
            raise ConfigError("--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key")
        registry = Registry(args.registry) if args.registry else None
        channel = GrpcChannel(args.address, config.server.algorithm, algorithm_settings(config),
                              chunk_bytes=args.chunk_mb * 2**20, max_update_bytes=args.max_update_mb * 2**20,
                              threads=num_clients + 16, tls=tls,
                              client_ca=read(args.tls_client_ca, "--tls-client-ca"), registry=registry,
                              heartbeat_s=args.heartbeat_s, num_clients=num_clients,
                              bulk_port=None if args.bulk_port < 0 else args.bulk_port)
        try:
            want = args.min_clients or num_clients
            bulk_note = f"; arrays also on port {channel.bulk_port}" if channel.bulk_port else ""
            console.print(f"listening on {channel.address}{bulk_note}; waiting for {want} of {num_clients} clients "
                          f"(cohort client --server {channel.address} --id ID ...)", highlight=False, markup=False,
                          soft_wrap=True)
            console.file.flush()
            channel.wait_for_clients(want, args.wait_s)
        except BaseException:
            channel.close("the server stopped before the run began")
            raise
        return channel

    return _run(args, channel_for)


def _client(args: argparse.Namespace) -> int:
    """``cohort client``: one client process, built from --app or from the run's config."""
    import importlib

    from cohort.channel.grpc.client import serve
    from cohort.channel.inprocess import torch_threads

    if args.app and (args.config or args.set or args.data):
        raise ConfigError("give either --app module:function (your client_fn) or --config CONFIG.toml with --set and "
                          "--data (the run's own data and model; none: the embedded demo), not both")
    threads = 1
    if args.app:
        module, sep, attr = args.app.partition(":")
        if not sep or not module or not attr:
            raise ConfigError(f"--app is {args.app!r}; expected module:function, e.g. my_clients:client_fn")
        sys.path.insert(0, ".")
        try:
            client_fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"--app {args.app!r}: {e}") from e
        if not callable(client_fn):
            raise ConfigError(f"--app {args.app!r} is a {type(client_fn).__name__}; expected a function client_id -> client")
    else:
        from cohort.experiment import build

        from cohort.client.site import SiteClient, is_site_federation

        args.resume = None
        config, _ = _load(args)
        threads = config.simulation.threads
        if args.id < 0:
            raise ConfigError(f"--id is {args.id}; expected an integer >= 0")
        if is_site_federation(config):  # a site: only its own rows, prepared as the federation agrees
            client_fn = SiteClient(config, args.id, args.data)
            args.name = args.name or client_fn.name
        else:
            if args.data:
                raise ConfigError("--data is a site's own CSV file, for a config with data.dataset = 'csv' and a "
                                  "natural partition (files, column, assigned)")
            experiment = build(config)
            if not 0 <= args.id < experiment.num_clients:
                raise ConfigError(f"--id is {args.id}; this config has clients 0 to {experiment.num_clients - 1}")
            client_fn = experiment.client_fn()
    from cohort.channel.grpc.auth import load_private
    from cohort.channel.grpc.certs import read
    from cohort.channel.grpc.client import Credentials

    credentials = Credentials(tls_ca=read(args.tls_ca, "--tls-ca"), tls_cert=read(args.tls_cert, "--tls-cert"),
                              tls_key=read(args.tls_key, "--tls-key"), key=load_private(args.key) if args.key else None)
    with torch_threads(threads):  # as in simulation, so the two give the same bits
        reason = serve(args.server, client_fn, args.id, name=args.name or f"client-{args.id}", retry_for_s=args.retry_s,
                       credentials=credentials)
    print(f"client {args.id}: done ({reason})", flush=True)
    return 0


def _certs(args: argparse.Namespace) -> int:
    from cohort.channel.grpc.certs import make_certs

    paths = make_certs(args.out, args.host)
    print(f"wrote {', '.join(str(p) for p in paths.values())}\n"
          f"server: cohort server ... --tls-cert {paths['cert']} --tls-key {paths['key']}"
          f" [--tls-client-ca {paths['ca']}: mutual TLS]\n"
          f"client: cohort client ... --tls-ca {paths['ca']}"
          f" [--tls-cert {paths['client_cert']} --tls-key {paths['client_key']}: mutual TLS]")
    return 0


def _keys(args: argparse.Namespace) -> int:
    """``cohort keys new|allow|revoke|list``: client key pairs, and the server's registry of them."""
    from datetime import datetime

    from cohort.channel.grpc.auth import fingerprint, make_keys
    from cohort.channel.grpc.certs import read
    from cohort.channel.grpc.registry import Registry

    if args.action == "new":
        for cid in args.id:
            paths = make_keys(args.out, cid)
            print(f"client {cid}: private key {paths['key']} (keep it on the client: cohort client --id {cid} --key "
                  f"{paths['key']} ...); public key {paths['pub']} (give it to the server's operator: cohort keys allow "
                  f"--registry REGISTRY.sqlite --id {cid} --public {paths['pub']})")
        return 0
    registry = Registry(args.registry, create=args.action == "allow")
    try:
        if args.action == "allow":
            cid = args.id
            public = read(args.public, "--public")
            registry.allow(cid, public, args.name)
            print(f"client {cid} allowed in {args.registry} (key {fingerprint(public)})")
        elif args.action == "revoke":
            for cid in args.id:
                registry.revoke(cid, args.reason)
                print(f"client {cid} revoked in {args.registry}: it is refused from its next message on")
        else:
            def when(t):
                return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")

            print(f"{'id':>6}  {'name':<20} {'key':<16}  {'added':<19}  {'last seen':<19}  status")
            for e in registry.entries():
                status = "allowed" if e.revoked is None else f"revoked {when(e.revoked)}: {e.revoked_reason}"
                print(f"{e.client_id:>6}  {e.name[:20]:<20} {fingerprint(e.public_key)}  {when(e.added):<19}  "
                      f"{when(e.last_seen):<19}  {status}")
    finally:
        registry.close()
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

    server = sub.add_parser("server", help="run a config as a real federation: clients are `cohort client` processes")
    server.add_argument("config", nargs="?", help="TOML experiment config (the same one `cohort run` takes)")
    server.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to listen on (port 0: any free port)")
    server.add_argument("--min-clients", type=int, default=0, help="clients to wait for before round 1 (default: data.num_clients)")
    server.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for them (seconds)")
    server.add_argument("--chunk-mb", type=int, default=4, help="largest message on the wire, in MiB (arrays are streamed in chunks)")
    server.add_argument("--max-update-mb", type=int, default=2048, help="largest result accepted from a client, in MiB")
    server.add_argument("--tls-cert", help="the server's certificate chain (PEM); with --tls-key, serves TLS")
    server.add_argument("--tls-key", help="the server's private key (PEM)")
    server.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM): mutual TLS")
    server.add_argument("--registry", help="SQLite file of the clients allowed to join and their public keys "
                                           "(`cohort keys allow`); every client must then sign with its key. "
                                           "Required on any address other than loopback")
    server.add_argument("--heartbeat-s", type=float, default=5.0,
                        help="clients ping this often; one silent for three periods is marked offline (seconds)")
    server.add_argument("--bulk-port", type=int, default=0,
                        help="port of the same host for the bulk connections that carry arrays beside the gRPC "
                             "stream, about 8x faster (0: any free port; -1: none). Give a fixed one to open it in a "
                             "firewall; a client that cannot reach it sends everything on the stream")
    run_options(server, "continue a server that was stopped or killed; its clients reconnect on their own")
    server.set_defaults(func=_server)

    client = sub.add_parser("client", help="run one client of a federation served by `cohort server`")
    client.add_argument("--server", required=True, help="HOST:PORT of the server")
    client.add_argument("--id", type=int, required=True, help="this client's id (which data it holds)")
    client.add_argument("--app", help="module:function returning the client of an id (as a simulation's client_fn)")
    client.add_argument("--config", help="or: the run's TOML config, whose data and model this client uses (none: the demo)")
    client.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting of --config")
    client.add_argument("--data-dir", help="folder of downloadable datasets (with --config)")
    client.add_argument("--data", help="this site's own CSV file (a config with data.dataset = 'csv' and a natural partition)")
    client.add_argument("--name", default="", help="a name for the server's logs")
    client.add_argument("--tls-ca", help="the CA certificate (PEM) that signed the server's: connect with TLS")
    client.add_argument("--tls-cert", help="this client's certificate (PEM), for a server that requires mutual TLS")
    client.add_argument("--tls-key", help="the private key (PEM) of --tls-cert")
    client.add_argument("--key", help="this client's private key from `cohort keys new`, for a server with a registry")
    client.add_argument("--retry-s", type=float, default=60.0, help="give up after the server is unreachable this long")
    client.set_defaults(func=_client)

    certs = sub.add_parser("certs", help="make a self-signed CA, a server and a client certificate, for testing TLS")
    certs.add_argument("--out", required=True, help="folder to write ca.pem, ca.key, server.pem/.key and client.pem/.key in")
    certs.add_argument("--host", action="append", default=[], help="a name or IP address clients reach the server by (repeatable)")
    certs.set_defaults(func=_certs)

    keys = sub.add_parser("keys", help="client key pairs, and the server's registry of allowed clients")
    actions = keys.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="make a client's key pair: client-ID.key (private) and client-ID.pub")
    new.add_argument("--out", required=True, help="folder to write the key files in")
    new.add_argument("--id", type=int, action="append", required=True, help="the client's id (repeatable)")
    allow = actions.add_parser("allow", help="allow a client's public key in a registry (made if missing)")
    allow.add_argument("--registry", required=True, help="the server's registry (SQLite)")
    allow.add_argument("--id", type=int, required=True, help="the client's id")
    allow.add_argument("--public", required=True, help="the client's public key (client-ID.pub)")
    allow.add_argument("--name", default="", help="a name for listings, e.g. the site")
    revoke = actions.add_parser("revoke", help="revoke clients: refused from their next message on")
    revoke.add_argument("--registry", required=True, help="the server's registry (SQLite)")
    revoke.add_argument("--id", type=int, action="append", required=True, help="a client's id (repeatable)")
    revoke.add_argument("--reason", default="", help="why, for the refused client and the listing")
    listing = actions.add_parser("list", help="list a registry's clients, their keys, last contact and revocations")
    listing.add_argument("--registry", required=True, help="the server's registry (SQLite)")
    for p in (new, allow, revoke, listing):
        p.set_defaults(func=_keys)

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
