"""Client keys and signatures: every client holds an Ed25519 key pair (``cohort keys new``) whose public
half the server's registry knows (``cohort keys allow``).

What is signed is built here, field by field, as length-prefixed bytes, so that the client and the
server agree on it without relying on protobuf's serialization being byte-stable. Ed25519 itself
comes from ``cryptography``.

- The hello: ``("cohort/hello/v1", challenge, client id, name)``. The challenge is 32 random bytes
  the server makes for this connection, so a recorded hello cannot be replayed on another one.
- Each result: ``("cohort/result/v1", challenge, seq, task id, task, version, meta, payload length,
  SHA-256 of the payload)``. ``seq`` counts up on the connection, so a result cannot be replayed on
  it, and the payload's hash makes the signature cover the arrays themselves.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cohort.core.errors import ConfigError

HELLO, RESULT = b"cohort/hello/v1", b"cohort/result/v1"
NONCE_BYTES = 32


def signed_bytes(*fields: bytes | str | int) -> bytes:
    """The fields as one unambiguous byte string: each is 8 bytes of length then its bytes."""
    out = bytearray()
    for f in fields:
        if isinstance(f, int):
            f = f.to_bytes(8, "big", signed=True)
        elif isinstance(f, str):
            f = f.encode()
        out += len(f).to_bytes(8, "big") + f
    return bytes(out)


def hello_bytes(nonce: bytes, client_id: int, name: str) -> bytes:
    return signed_bytes(HELLO, nonce, client_id, name)


def result_bytes(nonce: bytes, header, digest: bytes) -> bytes:
    return signed_bytes(RESULT, nonce, header.seq, header.task_id, header.task, header.version, header.meta,
                        header.payload_bytes, digest)


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def digest_of(pieces) -> bytes:
    h = hashlib.sha256()
    for p in pieces:
        h.update(p)
    return h.digest()


# --- keys ---------------------------------------------------------------------------------------
def make_keys(folder: str | Path, client_id: int) -> dict[str, Path]:
    """``client-ID.key`` (private, mode 0600) and ``client-ID.pub`` in ``folder``; refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cohort.channel.grpc.certs import _write

    if not (isinstance(client_id, int) and not isinstance(client_id, bool) and client_id >= 0):
        raise ConfigError(f"--id is {client_id!r}; expected an integer >= 0")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"key": folder / f"client-{client_id}.key", "pub": folder / f"client-{client_id}.pub"}
    for p in paths.values():
        if p.exists():
            raise ConfigError(f"{p} exists; a key is never overwritten (a new key must be allowed again on the "
                              "server). Remove it first, or write to another --out folder")
    key = Ed25519PrivateKey.generate()
    _write(paths["key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), private=True)
    _write(paths["pub"], public_pem(key))
    return paths


def public_pem(private_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(path: str | Path):
    """An Ed25519 private key from a PEM file, or a ConfigError that says what is wrong with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"--key {str(path)!r} cannot be read: {e.strerror or e}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--key {str(path)!r} is not an unencrypted PEM private key ({e}); make one with "
                          "`cohort keys new`") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key {str(path)!r} is a {type(key).__name__}; cohort client keys are Ed25519 "
                          "(`cohort keys new`)")
    return key


def load_public(data: bytes, what: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what} is not a PEM public key ({e}); give the .pub file `cohort keys new` wrote") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{what} is a {type(key).__name__}; cohort client keys are Ed25519 (`cohort keys new`)")
    return key


def verify(public_key, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(signature, data)
        return True
    except InvalidSignature:
        return False


def fingerprint(public_pem_bytes: bytes) -> str:
    """A short, stable name of a public key for listings and logs."""
    return hashlib.sha256(public_pem_bytes.strip()).hexdigest()[:16]
