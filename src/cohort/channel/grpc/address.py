"""Addresses: what a server listens on (``check_address``) and what a client dials (``check_server``)."""

from __future__ import annotations

import ipaddress

from cohort.core.errors import ConfigError


def check_address(address: str, tls: bool = False, registry: bool = False) -> tuple[str, int]:
    """``host:port``; on anything but a loopback interface only with TLS and a client registry."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--address is {address!r}; expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any free port)")
    name = host.strip("[]")
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not tls:
        raise ConfigError(f"--address {address!r} is not a loopback address: serve it with TLS (--tls-cert and "
                          "--tls-key; `cohort certs` makes test certificates). Without TLS only 127.0.0.1, "
                          "localhost or [::1] are served")
    if not loopback and not registry:
        raise ConfigError(f"--address {address!r} is not a loopback address: its clients must authenticate. Give "
                          "--registry REGISTRY.sqlite (`cohort keys new` makes each client's key pair and "
                          "`cohort keys allow` adds it)")
    return host, int(port)


def check_server(address: str) -> None:
    """``host:port`` with a port: without one, gRPC would dial 443 and report the connection as lost."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or host.endswith(":") or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--server is {address!r}; expected HOST:PORT, e.g. 10.0.0.5:8080 or [::1]:8080 (the "
                          "address `cohort server` printed as 'listening on')")
