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


# --- per-site identity: each site makes its own key and a request; the federation's CA signs it ---------
SITE_DAYS = 30  # a site's certificate is short-lived: renewed (a new request, signed again) within a month


def request(folder: str | Path, site: str) -> dict[str, Path]:
    """A site's own private key (``SITE.key``, mode 0600, which never leaves ``folder``) and a certificate
    signing request (``SITE.csr``) for the coordinator to sign: the request holds the site's name and
    public key, nothing secret."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    if not site or not all(c.isalnum() or c in "-_." for c in site) or len(site) > 64:
        raise ConfigError(f"--site {site!r}: expected a site name of letters, digits, '-', '_' or '.' (at most 64)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = _key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
           .sign(key, hashes.SHA256()))
    paths = {"key": folder / f"{site}.key", "csr": folder / f"{site}.csr"}
    _write(paths["key"], _pem_key(key), private=True)
    _write(paths["csr"], csr.public_bytes(serialization.Encoding.PEM))
    return paths


def make_ca(folder: str | Path, name: str = "cohort federation CA", days: int = 3650) -> dict[str, Path]:
    """The federation's CA, made once by its coordinator (``ca.pem`` to share, ``ca.key`` to keep); every
    site's certificate is signed by it, so a new site needs no new CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    paths = {"ca": folder / "ca.pem", "ca_key": folder / "ca.key"}
    if paths["ca"].exists() or paths["ca_key"].exists():
        raise ConfigError(f"{folder} already holds a CA ({paths['ca'].name}); a federation keeps one CA, so the "
                          "sites' certificates stay valid: sign with it (cohort certs sign)")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(key, hashes.SHA256()))
    _write(paths["ca"], ca.public_bytes(serialization.Encoding.PEM))
    _write(paths["ca_key"], _pem_key(key), private=True)
    return paths


def sign(csr_path: str | Path, ca_path: str | Path, ca_key_path: str | Path, out: str | Path,
         days: int = SITE_DAYS, now: datetime.datetime | None = None) -> Path:
    """The certificate of a site's request, signed by the federation's CA: its name and public key from the
    request, for client authentication only, valid for ``days``. A request whose signature does not hold
    (altered on the way) is refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not (isinstance(days, int) and 1 <= days <= 825):
        raise ConfigError(f"--days is {days!r}; expected 1 to 825 (short-lived site certificates are renewed)")
    try:
        csr = x509.load_pem_x509_csr(Path(csr_path).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--csr {str(csr_path)!r} is not a readable certificate request (PEM): {e}") from e
    if not csr.is_signature_valid:
        raise ConfigError(f"--csr {str(csr_path)!r}: its signature does not match its public key (altered on the way?); "
                          "ask the site for its request again")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ConfigError(f"--csr {str(csr_path)!r} names no single site (common name)")
    ca_pem, key_pem = read(str(ca_path), "--ca"), read(str(ca_key_path), "--ca-key")
    check_pair(ca_pem, key_pem, f"--ca {str(ca_path)!r}", f"--ca-key {str(ca_key_path)!r}")
    ca = x509.load_pem_x509_certificates(ca_pem)[0]
    ca_key = serialization.load_pem_private_key(key_pem, password=None)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, cert.public_bytes(serialization.Encoding.PEM))
    return out


def valid_until(cert_pem: bytes) -> datetime.datetime:
    """When the first certificate of ``cert_pem`` expires."""
    from cryptography import x509

    return x509.load_pem_x509_certificates(cert_pem)[0].not_valid_after_utc


def check_current(cert_pem: bytes, what: str, now: datetime.datetime | None = None) -> None:
    """Raise ConfigError when the certificate has expired or is not valid yet: a clear line at start,
    rather than a TLS handshake that fails without saying why."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it: `cohort certs "
                          "request` at the site, `cohort certs sign` by the federation's coordinator")
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this "
                          "machine's clock right?)")
