"""The identity commands: ``cohort certs`` (a test set of certificates; a federation's one CA, each site's
own key and signing request, the coordinator's signature) and ``cohort keys`` (client key pairs and the
server's registry of allowed clients)."""

from __future__ import annotations

import argparse

from cohort.core.errors import ConfigError


def certs(args: argparse.Namespace) -> int:
    """``cohort certs``: test certificates; ``ca``, ``request`` and ``sign``: a federation's own identities."""
    from pathlib import Path

    from cohort.channel.grpc import certs as C

    if args.action == "ca":
        paths = C.make_ca(args.out)
        print(f"wrote {paths['ca']} (give it to the server, --tls-client-ca, and to every site, --tls-ca) and "
              f"{paths['ca_key']} (keep it with the coordinator: it signs the sites' requests)")
        return 0
    if args.action == "request":
        if not args.site:
            raise ConfigError("cohort certs request needs --site NAME (this site's name, in its certificate)")
        paths = C.request(args.out, args.site)
        print(f"wrote {paths['key']} (this site's private key: it never leaves {args.out}) and {paths['csr']} "
              f"(send it to the coordinator: cohort certs sign --csr {paths['csr'].name} ...)")
        return 0
    if args.action == "sign":
        if not (args.csr and args.ca and args.ca_key):
            raise ConfigError("cohort certs sign needs --csr SITE.csr, --ca ca.pem and --ca-key ca.key")
        out = C.sign(args.csr, args.ca, args.ca_key, Path(args.out) / (Path(args.csr).stem + ".pem"), days=args.days)
        until = C.valid_until(out.read_bytes())
        print(f"wrote {out}, valid until {until:%Y-%m-%d} UTC: send it back to the site (cohort client --tls-cert "
              f"{out.name} --tls-key {Path(args.csr).stem}.key)")
        return 0
    paths = C.make_certs(args.out, args.host)
    print(f"wrote {', '.join(str(p) for p in paths.values())}\n"
          f"server: cohort server ... --tls-cert {paths['cert']} --tls-key {paths['key']}"
          f" [--tls-client-ca {paths['ca']}: mutual TLS]\n"
          f"client: cohort client ... --tls-ca {paths['ca']}"
          f" [--tls-cert {paths['client_cert']} --tls-key {paths['client_key']}: mutual TLS]")
    return 0


def keys(args: argparse.Namespace) -> int:
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


def add_parsers(sub) -> None:
    """The identity commands' parsers, on ``cohort``'s subcommands."""
    certs_ = sub.add_parser("certs", help="certificates: a test set (CA, server, one shared client), or a federation's own "
                                          "CA and each site's (ca, request, sign)")
    certs_.add_argument("action", nargs="?", choices=["ca", "request", "sign"],
                        help="ca: the federation's CA (once); request: a site's own key and signing request (at the "
                             "site); sign: the coordinator signs a request. None: the test set")
    certs_.add_argument("--out", required=True, help="folder to write in (the test set: ca.pem, ca.key, server.pem/.key "
                                                     "and client.pem/.key)")
    certs_.add_argument("--site", help="request: this site's name")
    certs_.add_argument("--csr", help="sign: the site's request (SITE.csr)")
    certs_.add_argument("--ca", help="sign: the federation's CA certificate (ca.pem)")
    certs_.add_argument("--ca-key", help="sign: the CA's private key (ca.key)")
    certs_.add_argument("--days", type=int, default=30, help="sign: how long the site's certificate is valid (default 30)")
    certs_.add_argument("--host", action="append", default=[], help="a name or IP address clients reach the server by (repeatable)")
    certs_.set_defaults(func=certs)

    keys_ = sub.add_parser("keys", help="client key pairs, and the server's registry of allowed clients")
    actions = keys_.add_subparsers(dest="action", required=True)
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
        p.set_defaults(func=keys)
