"""The governance side of the commands: a site's policy checked at its start (``cohort client --policy``),
the run a server declares to the sites and its check of their policies before round 1 (``cohort server``),
and ``cohort audit``: an audit log's chain checked, and a site's log held against the server's."""

from __future__ import annotations

import argparse

from cohort.core.errors import CohortError, ConfigError


def declared(config) -> dict:
    """The run as the server declares it to the sites' policies (cohort.governance.policy)."""
    from cohort.client.site import is_site_federation
    from cohort.governance.policy import declaration

    central = config.privacy.mode == "central"
    tasks = ("train",) + (("evaluate",) if config.federated_fraction > 0 else ()) \
        + (("statistics",) if is_site_federation(config) else ())
    return declaration(algorithm=config.server.algorithm, secagg=config.secagg.mode,
                       central_noise_multiplier=config.privacy.noise_multiplier if central else 0.0,
                       clip=config.privacy.clip if central else 0.0, tasks=tasks, rounds=config.rounds)


def check_policies(channel, run: dict, console) -> None:
    """Before round 1: the connected sites' policies against the run. A site that refuses is named with
    its rule; if every connected site refuses (a site without a policy accepts), the run cannot start and stops here."""
    from cohort.governance.policy import preflight

    lines, nobody = preflight(channel.site_policies(), run)
    if nobody:
        raise ConfigError("no connected site's policy accepts this run, so it stops before round 1:\n  "
                          + "\n  ".join(lines) + "\nChange the config, or agree the rules with the sites")
    for line in lines:
        console.print(f"policy: {line}; its tasks will be refused", highlight=False, markup=False, soft_wrap=True)


def site_checks(policy, args: argparse.Namespace, config, app) -> None:
    """What a site's policy asks of the site's own side, checked before it dials: the model's code is
    on its list of apps, and its own DP (which the server cannot change) adds at least the noise required."""
    from cohort.algorithms import ALGORITHMS
    from cohort.governance.policy import ANY, app_allowed

    unknown = [a for a in policy.accept.algorithms if a != ANY and a not in ALGORITHMS]
    if unknown:
        raise ConfigError(f"accept.algorithms in --policy {args.policy} names {unknown}, which are no algorithm "
                          f"(known: {', '.join(ALGORITHMS)})")
    if config.model.factory and not app_allowed(policy, config.model.factory):
        raise ConfigError(f"the config's model.factory {config.model.factory!r} is not on this site's list of apps "
                          f"(accept.apps in --policy {args.policy}); it was not imported. Add it there to run it")
    need = policy.require.local_noise_multiplier
    if need:
        if app is not None and app.client is not None:
            raise ConfigError(f"--policy {args.policy} requires local DP (require.local_noise_multiplier = {need:g}); an "
                              "app's client trains its own way, so this site cannot check it: run the config's client")
        c = config.client
        noise = max(c.ldp_noise_multiplier if c.ldp else 0.0, c.dp_noise_multiplier if c.dp_sgd else 0.0)
        if noise < need:
            raise ConfigError(f"--policy {args.policy} requires this site's own DP to add noise of at least {need:g} "
                              f"(require.local_noise_multiplier); its config has client.ldp = {str(c.ldp).lower()}, "
                              f"client.dp_sgd = {str(c.dp_sgd).lower()}"
                              + (f" with noise {noise:g}" if noise else "")
                              + ". Set client.ldp = true and client.ldp_noise_multiplier (or client.dp_sgd) in its --set")


def algorithm_check(policy, config):
    """With ``require.local_noise_multiplier``: a check of the algorithm the server's welcome names against
    this site's own DP (the same refusals a simulation makes at its start: an algorithm that would send
    something local DP does not cover, such as SCAFFOLD's control variates). None without the rule."""
    if not policy.require.local_noise_multiplier:
        return None

    def check(name: str, settings) -> str | None:
        from dataclasses import replace

        from cohort.algorithms import ALGORITHMS
        from cohort.recipe import check_client_privacy

        if name not in ALGORITHMS:
            return None  # the client refuses an algorithm it does not know by itself
        try:
            algorithm = ALGORITHMS[name](**dict(settings))
            check_client_privacy(replace(config, server=replace(config.server, algorithm=name)), algorithm)
        except ConfigError as e:
            return f"the server runs {name!r}: {e}"
        except (TypeError, ValueError) as e:
            return f"the server runs {name!r} with settings this site cannot check ({e})"
        return None

    return check


def audit(args: argparse.Namespace) -> int:
    """``cohort audit verify LOG...`` and ``cohort audit compare --site LOG --server LOG --id N``."""
    from cohort.governance.audit import pairs, read, verify

    if args.action == "verify":
        broken = 0
        for path in args.logs:
            problems = verify(path)
            if problems:
                broken += 1
                print(f"{path}: BROKEN at {problems[0]}")
            else:
                n = sum(1 for _ in read(path))
                print(f"{path}: {n} entries, each whole and chained to the one before")
        if broken:
            raise CohortError(f"{broken} of {len(args.logs)} audit logs do not verify (see above)")
        return 0
    for path in (args.site, args.server):
        problems = verify(path)
        if problems:
            raise CohortError(f"{path} does not verify ({problems[0]}); compare only logs that do")
    differences = pairs(list(read(args.site)), list(read(args.server)), args.id)
    for d in differences:
        print(d)
    if differences:
        raise CohortError(f"the site's log and the server's disagree on {len(differences)} tasks of client {args.id}")
    print(f"{args.site} and {args.server} agree on every task of client {args.id}")
    return 0


def add_parsers(sub) -> None:
    """The governance commands' parsers, on ``cohort``'s subcommands."""
    audit_ = sub.add_parser("audit", help="check audit logs: a chain's integrity, and a site's log against the server's")
    actions = audit_.add_subparsers(dest="action", required=True)
    verify_ = actions.add_parser("verify", help="check that every entry is whole, numbered in order and chained "
                                                "to the one before (an edited, removed or reordered entry is named)")
    verify_.add_argument("logs", nargs="+", help="audit logs (a site's, or a run folder's audit.jsonl)")
    compare = actions.add_parser("compare", help="hold a site's log against the server's: the same tasks, with the same "
                                                 "digests of what was sent and what came back")
    compare.add_argument("--site", required=True, help="the site's audit log (cohort client --audit)")
    compare.add_argument("--server", required=True, help="the server's: RUN_DIR/audit.jsonl")
    compare.add_argument("--id", type=int, required=True, help="the site's client id")
    for p in (verify_, compare):
        p.set_defaults(func=audit)
