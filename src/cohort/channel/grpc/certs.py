"""``cohort certs``: a self-signed CA, and a server and a client certificate signed by it, for testing TLS.

Real deployments use certificates from their own CA: give the server its certificate chain and key
(``--tls-cert``, ``--tls-key``) and each client the CA that signed it (``--tls-ca``). For mutual TLS
the server also gets the CA that signs client certificates (``--tls-client-ca``) and each client its
own certificate and key (``--tls-cert``, ``--tls-key``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cohort.core.errors import ConfigError

DAYS = 365


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certs(folder: str | Path, hosts: list[str]) -> dict[str, Path]:
    """``ca.pem``/``ca.key`` and ``server.pem``/``server.key`` for ``hosts`` (names or IP addresses) in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ConfigError("cohort certs needs at least one --host (a name or IP address clients use to reach the server)")
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if not h or any(c.isspace() for c in h):
                raise ConfigError(f"--host {h!r} is neither an IP address nor a host name") from None
            sans.append(x509.DNSName(h))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cohort test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    def signed(common_name: str, usage, extensions=()):
        key = _key()
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=DAYS))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        for ext in extensions:
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    cert, key = signed(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, [x509.SubjectAlternativeName(sans)])
    client_cert, client_key = signed("cohort client", ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = serialization.Encoding.PEM
    paths = {"ca": folder / "ca.pem", "ca_key": folder / "ca.key", "cert": folder / "server.pem", "key": folder / "server.key",
             "client_cert": folder / "client.pem", "client_key": folder / "client.key"}
    _write(paths["ca"], ca.public_bytes(pem))
    _write(paths["ca_key"], _pem_key(ca_key), private=True)
    _write(paths["cert"], cert.public_bytes(pem))
    _write(paths["key"], _pem_key(key), private=True)
    _write(paths["client_cert"], client_cert.public_bytes(pem))
    _write(paths["client_key"], _pem_key(client_key), private=True)
    return paths


def read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path!r} cannot be read: {e.strerror or e}") from e
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path!r} is not a PEM file")
    return data


def check_pair(cert: bytes, key: bytes, cert_name: str, key_name: str) -> None:
    """Raise ConfigError unless ``key`` (PEM) is the private key of the first certificate of ``cert``
    (a PEM chain): a mismatched pair would otherwise fail deep inside gRPC ("Failed to bind")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        leaf = x509.load_pem_x509_certificates(cert)[0]
    except ValueError as e:
        raise ConfigError(f"{cert_name} is not a PEM certificate (chain): {e}") from e
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key_name} is not an unencrypted PEM private key: {e}") from e
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise ConfigError(f"{key_name} is not the private key of {cert_name} (their public keys differ): give the "
                          "key that was made with that certificate")
