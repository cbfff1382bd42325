"""The cryptographic parts of secure aggregation, all from ``cryptography``: X25519 key agreement,
HKDF-SHA256 key derivation, AES-256-GCM for the shares between clients, and AES-256-CTR as the
pseudorandom generator that expands a 256-bit seed into a mask.

Shamir secret sharing is written here (it is a few lines of modular arithmetic over the Mersenne
prime 2^521 − 1, and ``cryptography`` does not offer it); its randomness comes from ``secrets``.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

SEED_BYTES = 32  # every mask seed and key: 256 bits
PRIME = 2**521 - 1  # Shamir's field: any 32-byte secret is below it
SHARE_BYTES = 66  # an element of the field, big-endian


class SecAggError(Exception):
    """The protocol cannot go on (too few clients left, a forged or inconsistent message)."""


def new_private() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def private_from(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def agree(key: X25519PrivateKey, peer_public: bytes, label: bytes) -> bytes:
    """A 32-byte secret both ends derive: X25519, then HKDF-SHA256 bound to ``label``."""
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:
        raise SecAggError(f"a public key is not a valid X25519 key: {e}") from e
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=b"cohort/secagg/v1/" + label).derive(shared)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], aad)
    except Exception as e:  # InvalidTag, or a blob too short: a forged or misrouted share
        raise SecAggError(f"a share does not decrypt ({type(e).__name__}): forged, or sent to the wrong client") from e


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudorandom uint32 values from a 32-byte seed (AES-256-CTR keystream)."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"a mask seed has {len(seed)} bytes; expected {SEED_BYTES}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)) + encryptor.finalize(), dtype="<u4").astype(np.uint32)


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


# --- Shamir t-of-n secret sharing over GF(2^521 − 1) -------------------------------------------
def split(secret: bytes, threshold: int, xs: list[int]) -> dict[int, bytes]:
    """Shares of ``secret`` at the points ``xs`` (distinct, >= 1): any ``threshold`` of them give it
    back, fewer reveal nothing about it."""
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or min(xs) < 1:
        raise SecAggError(f"cannot share a secret {threshold}-of-{len(xs)} at points {xs[:5]}...")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


def combine(shares: dict[int, bytes], threshold: int, size: int = SEED_BYTES) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a secret shared {threshold}-of-n")
    points = [(x, int.from_bytes(y, "big")) for x, y in list(shares.items())[:threshold]]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * size):
        raise SecAggError("the shares do not fit together (forged or from different secrets)")
    return secret.to_bytes(size, "big")
