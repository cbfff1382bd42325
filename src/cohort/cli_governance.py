"""``cohort audit``: check an audit log's chain, and hold a site's log against the server's."""

from __future__ import annotations

import argparse

from cohort.core.errors import CohortError


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
