"""The deployment commands of ``cohort``: ``server`` (a run whose clients are processes that dial in),
``client`` (``cohort.cli_identity`` has ``certs`` and ``keys``); and, for a server whose sites hold their own rows, the data agreement
before round 1. ``cohort.cli`` holds the rest and the shared run path; ``cohort.cli_lifecycle`` what a
server adds to a run (its deadline, its update limit) and how it stops (ended, or pausing)."""

from __future__ import annotations

import argparse
import sys

from cohort.cli_lifecycle import BEFORE_THE_RUN, ROUND_TIMEOUT_S, goodbye_for, limit_updates, round_deadline
from cohort.core.errors import CohortError, ConfigError
from cohort.core.records import SITE


def sites_first(args: argparse.Namespace, config, app, console, channel_for):
    """The channel and the experiment of `cohort server`, in the order the config needs, with the
    largest accepted update set from the model. Returns (channel, the sites' agreement or None, experiment).

    A config whose sites hold the rows (a CSV config with a natural partition) needs the clients
    connected first: the data agreement is made with them (or read back from the run folder on
    --resume), then the experiment is built from it. Any other config is built first, so every check
    happens before the clients are waited for."""
    from pathlib import Path

    from cohort.cli_run import experiment_of
    from cohort.client.site import is_site_federation, site_count
    from cohort.data.exchange import AGREEMENT, Agreement, agree

    if app is not None or not is_site_federation(config):
        # an app's clients hold their own data: a server that only coordinates waits for the clients it is
        # told to (--min-clients), not for data.num_clients
        experiment = experiment_of(config, app, deployed_clients=args.min_clients if app is not None else None)
        channel = channel_for(config, experiment.num_clients, console)
        try:
            limit_updates(args, channel, experiment, console)
        except BaseException:
            channel.close(BEFORE_THE_RUN)
            raise
        return channel, None, experiment
    kept = Path(args.resume, "sites.json") if args.resume else None
    if kept is not None and kept.is_file():  # a resumed run keeps the preprocessing it was trained with
        sites = Agreement.from_json(kept.read_text(), str(kept))
        count, how = sites.num_clients, f"{sites.num_clients} sites, as {kept} says"
    else:
        sites = None
        count, how = site_count(config.data, args.min_clients)
    channel = channel_for(config, count, console)
    try:
        console.print(f"the sites: {how}", highlight=False, markup=False, soft_wrap=True)
        if sites is not None:
            console.print(f"the sites' agreement from {kept}", highlight=False, markup=False, soft_wrap=True)
        else:
            console.print("agreeing the data with the sites (schema, statistics)", highlight=False, soft_wrap=True)
            secure = config.secagg.settings() if config.secagg.mode != "none" else None  # then only sums reach the server
            sites = agree(channel, count, config.data, config.server.round_timeout_s or ROUND_TIMEOUT_S,
                          secure=secure, seed=config.seed)
            console.print(f"agreed with {len(sites.names)} sites: "
                          + ", ".join(f"{n} (client {c})" for c, n in sorted(sites.names.items())),
                          highlight=False, markup=False, soft_wrap=True)
        channel.message_config[SITE] = {AGREEMENT: sites.message_config()}  # every task's config carries it
        experiment = experiment_of(config, None, sites=sites)
        limit_updates(args, channel, experiment, console)
        return channel, sites, experiment
    except BaseException:
        channel.close(BEFORE_THE_RUN)
        raise


def server(args: argparse.Namespace) -> int:
    """``cohort server``: the same run as ``cohort run``, with clients that are processes dialing in."""
    from cohort.channel.grpc.limits import FLOOR_BYTES
    from cohort.channel.grpc.server import GrpcChannel
    from cohort.recipe import algorithm_settings

    import math

    from cohort.core.limits import MAX_TIMEOUT_S

    checks = (("--wait-s", args.wait_s, 0 < args.wait_s <= MAX_TIMEOUT_S, "seconds in (0, one week]"),
              ("--chunk-mb", args.chunk_mb, 1 <= args.chunk_mb <= 64, "1 to 64"),
              ("--max-update-mb", args.max_update_mb, 0 <= args.max_update_mb <= 2**20,
               "1 to 1048576, or 0 (the default: derived from the model)"),
              ("--min-clients", args.min_clients, args.min_clients is None or args.min_clients >= 1,
               "an integer >= 1, or leave the flag out for all of data.num_clients"),
              ("--heartbeat-s", args.heartbeat_s, 0.05 <= args.heartbeat_s <= 3600, "seconds from 0.05 to 3600"),
              ("--bulk-port", args.bulk_port, -1 <= args.bulk_port <= 65535,
               "a port for the bulk connections (0: any free one; -1: none, everything on the gRPC stream)"))
    for flag, value, ok, expected in checks:
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{flag} is {value!r}; expected {expected}")
    from cohort.channel.grpc.certs import check_pair, read
    from cohort.channel.grpc.registry import Registry

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: the server's certificate (chain) and its private key")
    tls = (read(args.tls_cert, "--tls-cert"), read(args.tls_key, "--tls-key")) if args.tls_cert else None
    if tls is not None:
        check_pair(*tls, f"--tls-cert {args.tls_cert!r}", f"--tls-key {args.tls_key!r}")
        from cohort.channel.grpc.certs import check_current

        check_current(tls[0], f"--tls-cert {args.tls_cert!r}")
    if args.tls_client_ca and not tls:
        raise ConfigError("--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key")
    client_ca = read(args.tls_client_ca, "--tls-client-ca")
    if args.registry:  # checked now, not at the first client's hello
        _check_readable(args.registry, "--registry")
        Registry(args.registry).close()
    from cohort.cli_run import load, run_command

    deadline = round_deadline(args, load(args)[0])
    goodbye = goodbye_for(args)

    from cohort.cli_governance import check_policies, declared

    def channel_for(config, num_clients, console):
        if args.min_clients is not None and args.min_clients > num_clients:
            raise ConfigError(f"--min-clients is {args.min_clients} but the config has {num_clients} clients "
                              "(data.num_clients)")
        registry = Registry(args.registry) if args.registry else None
        # each registered client holds one of the server's threads for its stream; the ones still in
        # their hello have a small quota of their own beside (channel/grpc/admission.py)
        channel = GrpcChannel(args.address, config.server.algorithm, algorithm_settings(config),
                              chunk_bytes=args.chunk_mb * 2**20,
                              max_update_bytes=args.max_update_mb * 2**20 if args.max_update_mb else FLOOR_BYTES,
                              tls=tls, client_ca=client_ca, registry=registry, heartbeat_s=args.heartbeat_s,
                              num_clients=num_clients, bulk_port=None if args.bulk_port < 0 else args.bulk_port,
                              goodbye=goodbye, declaration=declared(config))
        args.bound_address = channel.address  # what a resume must listen on (port 0 became a port)
        channel.set_stragglers(config.server.stragglers())
        try:
            want = args.min_clients or num_clients
            bulk_note = f"; arrays also on port {channel.bulk_port}" if channel.bulk_port else ""
            console.print(f"listening on {channel.address}{bulk_note}; waiting for {want} of {num_clients} clients "
                          f"(cohort client --server {channel.address} --id ID ...)", highlight=False, markup=False,
                          soft_wrap=True)
            console.print(deadline, highlight=False, markup=False, soft_wrap=True)
            console.file.flush()
            channel.wait_for_clients(want, args.wait_s)
            check_policies(channel, declared(config), console)
        except BaseException:
            channel.close(BEFORE_THE_RUN)
            raise
        return channel

    return run_command(args, lambda config, app, console: sites_first(args, config, app, console, channel_for))


def _check_readable(path: str, flag: str) -> None:
    """A file the server must read: one clear line now rather than a failure on the first client's hello."""
    from pathlib import Path

    if not Path(path).exists():
        return  # the registry says so itself, with how to make one
    try:
        with open(path, "rb") as f:
            f.read(16)
    except OSError as e:
        raise ConfigError(f"{flag} {path!r} cannot be read: {e.strerror or e}") from e


def client(args: argparse.Namespace) -> int:
    """``cohort client``: one client process, built from --app or from the run's config."""
    from cohort.channel.grpc.client import serve
    from cohort.channel.inprocess import torch_threads

    from cohort.channel.grpc.address import check_server

    check_server(args.server)  # before anything is built: a missing port is a typo, not a lost connection
    if args.app and args.data:
        raise ConfigError("--data is a site's own CSV file for a config's site federation; an app's clients load their "
                          "own data (App(client=...)): leave --data out")
    threads = 1
    if args.id < 0:
        raise ConfigError(f"--id is {args.id}; expected an integer >= 0")
    policy = None
    if args.policy:  # the site's own rules, checked before any code of the run is imported
        from cohort.governance.policy import app_allowed, load_policy

        policy = load_policy(args.policy)
        if args.app and not app_allowed(policy, args.app):
            raise ConfigError(f"--app {args.app!r} is not on this site's list of apps (accept.apps in --policy "
                              f"{args.policy}: {list(policy.accept.apps) or 'none: built-ins only'}); it was not "
                              "imported. Add it there to run it")
    from cohort.cli_run import load

    args.resume = None
    config, _, app = load(args) if (args.app or args.config or args.set) else (None, None, None)
    if policy is not None:
        if config is None:
            config, _, _ = load(args)
        from cohort.cli_governance import site_checks

        site_checks(policy, args, config, app)
    if app is not None and app.client is not None:  # the app's client; its settings and records come from the server
        client_fn = app.client_app(args.name)
        threads = config.simulation.threads
    else:
        from cohort.client.site import SiteClient, is_site_federation

        if config is None:
            config, _, _ = load(args)
        threads = config.simulation.threads
        if is_site_federation(config):  # a site: only its own rows, prepared as the federation agrees
            client_fn = SiteClient(config, args.id, args.data)
            args.name = args.name or client_fn.name
        else:
            if args.data:
                raise ConfigError("--data is a site's own CSV file, for a config with data.dataset = 'csv' and a "
                                  "natural partition (files, column, assigned)")
            from cohort.cli_run import experiment_of

            experiment = experiment_of(config, app)
            if not 0 <= args.id < experiment.num_clients:
                raise ConfigError(f"--id is {args.id}; this config has clients 0 to {experiment.num_clients - 1}")
            client_fn = experiment.client_fn()
    from cohort.channel.grpc.auth import load_private
    from cohort.channel.grpc.certs import read
    from cohort.channel.grpc.client import Credentials

    credentials = Credentials(tls_ca=read(args.tls_ca, "--tls-ca"), tls_cert=read(args.tls_cert, "--tls-cert"),
                              tls_key=read(args.tls_key, "--tls-key"), key=load_private(args.key) if args.key else None)
    if credentials.tls_cert is not None:  # an expired certificate: one clear line, not a failing handshake
        from cohort.channel.grpc.certs import check_current, check_pair

        check_current(credentials.tls_cert, f"--tls-cert {args.tls_cert!r}")
        if credentials.tls_key is not None:
            check_pair(credentials.tls_cert, credentials.tls_key, f"--tls-cert {args.tls_cert!r}", f"--tls-key {args.tls_key!r}")
    last: dict = {}  # this client's last task and its outcome

    def on_task(task, outcome):
        last["task"], last["outcome"] = task, outcome

    gate = audit = None
    if policy is not None:
        from cohort.governance.policy import Gate, usage_path

        from cohort.cli_governance import algorithm_check

        gate = Gate(policy, args.policy, usage_path(policy, args.policy), check_algorithm=algorithm_check(policy, config))
    from pathlib import Path

    audit_path = args.audit or (str(Path(args.policy).with_suffix("")) + ".audit.jsonl" if args.policy else None)
    if audit_path:
        from cohort.governance.audit import AuditLog

        audit = AuditLog(audit_path)
        print(f"client {args.id}: audit log {audit_path} ({audit.n} entries before this run)", file=sys.stderr, flush=True)
    with torch_threads(threads):  # as in simulation, so the two give the same bits
        reason = serve(args.server, client_fn, args.id, name=args.name or f"client-{args.id}", retry_for_s=args.retry_s,
                       credentials=credentials, pause_wait_s=args.pause_wait_s, on_task=on_task, gate=gate,
                       audit=audit)
    from cohort.core.types import ClientFailure

    failed = last.get("outcome")
    if isinstance(failed, ClientFailure):  # e.g. a site that refused to send its statistics in the clear
        raise CohortError(f"client {args.id} failed its last task ({last['task']}): {failed.reason}; the server then "
                          f"said: {reason}")
    print(f"client {args.id}: done ({reason})", flush=True)
    return 0


def add_parsers(sub, run_options) -> None:
    """The deployment commands' parsers, on ``cohort``'s subcommands."""
    server_ = sub.add_parser(
        "server", help="run a config as a real federation: clients are `cohort client` processes",
        description=f"Run a config as a real federation. Safe defaults: every round has a deadline of "
                    f"{ROUND_TIMEOUT_S:.0f} s unless server.round_timeout_s sets another (0: none, said loudly at "
                    "start); the largest update accepted is derived from the model (--max-update-mb overrides); "
                    "connections that have not said who they are get a small quota of their own and a few seconds. "
                    "SIGTERM or Ctrl-C pauses the run: the finished rounds are kept, the clients are told the server "
                    "is pausing and wait (cohort client --pause-wait-s) for `cohort server --resume RUN_DIR`.")
    server_.add_argument("config", nargs="?", help="TOML experiment config (the same one `cohort run` takes)")
    server_.add_argument("--app", help="module:attribute of a cohort.App: its initial model, evaluation, per-round "
                                       "configs and metric aggregation run here; its clients in `cohort client --app`")
    server_.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to listen on (port 0: any free port)")
    server_.add_argument("--min-clients", type=int, default=None,
                        help="clients to wait for before round 1, at least 1 (default: all of data.num_clients); with "
                             "an app, the federation's clients")
    server_.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for them (seconds)")
    server_.add_argument("--chunk-mb", type=int, default=4, help="largest message on the wire, in MiB (arrays are streamed in chunks)")
    server_.add_argument("--max-update-mb", type=int, default=0,
                        help="largest result accepted from a client, in MiB (default 0: derived from the model, as "
                             "the algorithm and compression send it back, and at least 16 MiB; printed at start)")
    server_.add_argument("--tls-cert", help="the server's certificate chain (PEM); with --tls-key, serves TLS")
    server_.add_argument("--tls-key", help="the server's private key (PEM)")
    server_.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM): mutual TLS")
    server_.add_argument("--registry", help="SQLite file of the clients allowed to join and their public keys "
                                           "(`cohort keys allow`); every client must then sign with its key. "
                                           "Required on any address other than loopback")
    server_.add_argument("--heartbeat-s", type=float, default=5.0,
                        help="clients ping this often; one silent for three periods is marked offline (seconds)")
    server_.add_argument("--bulk-port", type=int, default=0,
                        help="port of the same host for the bulk connections that carry arrays beside the gRPC "
                             "stream, about 8x faster (0: any free port; -1: none). Give a fixed one to open it in a "
                             "firewall; a client that cannot reach it sends everything on the stream")
    run_options(server_, "continue a server that was stopped or killed; its clients reconnect on their own")
    server_.set_defaults(func=server)

    client_ = sub.add_parser("client", help="run one client of a federation served by `cohort server`")
    client_.add_argument("--server", required=True, help="HOST:PORT of the server")
    client_.add_argument("--id", type=int, required=True, help="this client's id (which data it holds)")
    client_.add_argument("--app", help="module:attribute of a cohort.App (its client), or of a function client_id -> "
                                       "client (as a simulation's client_fn); settings and per-round records come from the server")
    client_.add_argument("--config", help="the run's TOML config, whose data and model this client uses (none: the "
                                          "demo), or what an app leaves to it")
    client_.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting of --config")
    client_.add_argument("--data-dir", help="folder of downloadable datasets (with --config)")
    client_.add_argument("--data", help="this site's own CSV file (a config with data.dataset = 'csv' and a natural partition)")
    client_.add_argument("--name", default="", help="a name for the server's logs")
    client_.add_argument("--audit", help="this site's audit log (JSONL, hash-chained): every task received and what was "
                         "sent back; `cohort audit verify` checks it. Default with --policy: NAME.audit.jsonl beside it")
    client_.add_argument("--policy", help="this site's policy (TOML): the tasks, algorithms, apps, protections, limits "
                         "and disclosures it accepts, enforced here on every task (docs: Operating a site)")
    client_.add_argument("--tls-ca", help="the CA certificate (PEM) that signed the server's: connect with TLS")
    client_.add_argument("--tls-cert", help="this client's certificate (PEM), for a server that requires mutual TLS")
    client_.add_argument("--tls-key", help="the private key (PEM) of --tls-cert")
    client_.add_argument("--key", help="this client's private key from `cohort keys new`, for a server with a registry")
    client_.add_argument("--retry-s", type=float, default=60.0, help="give up after the server is unreachable this long")
    client_.add_argument("--pause-wait-s", type=float, default=3600.0,
                         help="how long to wait for a server that said it is pausing (stopped by SIGTERM or Ctrl-C, or "
                              "an error, to be resumed) to take this client back (default 3600 s); then exit with status 2")
    client_.set_defaults(func=client)
