"""Secure aggregation (Bonawitz et al. 2017), and SecAgg+ (Bell et al. 2020) with a sparse graph.

The server learns the sum of the surviving clients' vectors and nothing else about any one of them,
while up to ``n − t`` clients may drop out at any stage. Each client masks its quantized vector:

    y_u = x_u + PRG(b_u) + Σ_{v ~ u, u < v} PRG(s_uv) − Σ_{v ~ u, u > v} PRG(s_uv)   (mod 2^32)

``s_uv`` comes from X25519 agreement between u's and v's mask keys, so the pairwise masks cancel in
the sum; ``b_u`` is u's own seed. Both u's mask key and ``b_u`` are Shamir-shared t-of-n among u's
neighbours, the shares encrypted to each neighbour (AES-GCM under an X25519-agreed key) and routed
by the server, which cannot read them. At the end the server asks each survivor, for every other
client, for exactly one kind of share: ``b_v`` of a client whose masked vector arrived (to remove
its self-mask), or the mask key of a client that dropped after sharing (to remove the pairwise
masks that the survivors added for it). A client refuses a request for both kinds of share of the
same client, since the two together would unmask that client's vector.

The four stages, each a method on both ends:

    client.advertise()            -> (c_pk, s_pk)          server.collect_keys(...)   -> keys for all
    client.share_keys(keys)       -> {v: ciphertext}       server.route(...)          -> each v's inbox
    client.masked_input(x, inbox) -> y                     server.collect_masked(...) -> (survivors, dropped)
    client.unmask(surv., dropped) -> {v: (kind, share)}    server.unmask(...)         -> Σ x_u mod 2^32

With ``neighbours`` (:func:`harary_graph`) every client shares with and masks against only its k
neighbours (SecAgg+): O(n·k) work instead of O(n²), and the threshold applies per neighbourhood.
The model is an honest-but-curious server (it follows the protocol, and tries to learn from what it
sees). Against a server that lies about who dropped, Bonawitz et al.'s signed consistency round is
needed too; it is not built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cohort.core.seeding import Stage, rng
from cohort.secagg.crypto import (
    SEED_BYTES, SHARE_BYTES, SecAggError, agree, combine, decrypt, encrypt, new_private, new_seed, prg, private_bytes,
    private_from, public_bytes, split,
)

B_SHARE, KEY_SHARE = "b", "s"


def harary_graph(ids: list[int], degree: int, seed: int, round_: int) -> dict[int, frozenset[int]]:
    """SecAgg+'s sparse graph: the ids in a seeded random cycle, each joined to the ``degree // 2``
    before and after it (itself included). ``degree >= n − 1`` gives the complete graph."""
    n = len(ids)
    if degree >= n - 1:
        full = frozenset(ids)
        return {u: full for u in ids}
    order = [ids[i] for i in rng(seed, round_, Stage.SECAGG_GRAPH).permutation(n)]
    half = max(1, degree // 2)
    return {order[i]: frozenset(order[(i + d) % n] for d in range(-half, half + 1)) for i in range(n)}


def u8(b: bytes) -> np.ndarray:
    """Bytes as a uint8 array: how the protocol's bytes travel and rest in a client's state."""
    return np.frombuffer(b, np.uint8).copy()


def _x(cid: int) -> int:
    return cid + 1  # Shamir's points must not be 0


class SecAggClient:
    """One client's side of one round of the protocol (a new one every round)."""

    def __init__(self, cid: int, threshold: int, neighbours: frozenset[int] | None = None) -> None:
        self.cid, self.t, self.neighbours = cid, threshold, neighbours
        self._c = new_private()  # for encrypting shares
        self._s = new_private()  # for the pairwise masks
        self._b = b""
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._own: dict[str, bytes] = {}
        self._inbox: dict[int, bytes] = {}
        self.stage = 0

    def to_state(self) -> dict[str, np.ndarray]:
        """Everything this client holds mid-round, as arrays (its per-client state between exchanges)."""
        ids = sorted(self._keys)
        inbox_ids = sorted(self._inbox)
        blobs = [self._inbox[v] for v in inbox_ids]
        return {
            "head": np.array([self.cid, self.t, self.stage, self.neighbours is not None], np.int64),
            "neighbours": np.array(sorted(self.neighbours or ()), np.int64),
            "c_sk": u8(private_bytes(self._c)), "s_sk": u8(private_bytes(self._s)), "b": u8(self._b),
            "key_ids": np.array(ids, np.int64),
            "c_pk": np.array([list(self._keys[v][0]) for v in ids], np.uint8).reshape(len(ids), 32),
            "s_pk": np.array([list(self._keys[v][1]) for v in ids], np.uint8).reshape(len(ids), 32),
            "own_s": u8(self._own.get(KEY_SHARE, b"")), "own_b": u8(self._own.get(B_SHARE, b"")),
            "inbox_ids": np.array(inbox_ids, np.int64), "inbox_sizes": np.array([len(x) for x in blobs], np.int64),
            "inbox": u8(b"".join(blobs)),
        }

    @classmethod
    def from_state(cls, state) -> "SecAggClient":
        try:
            cid, t, stage, has = (int(v) for v in state["head"])
            client = cls(cid, t, frozenset(int(v) for v in state["neighbours"]) if has else None)
            client._c, client._s = private_from(state["c_sk"].tobytes()), private_from(state["s_sk"].tobytes())
            client._b, client.stage = state["b"].tobytes(), stage
            client._keys = {int(v): (state["c_pk"][i].tobytes(), state["s_pk"][i].tobytes())
                            for i, v in enumerate(state["key_ids"])}
            if state["own_s"].size:
                client._own = {KEY_SHARE: state["own_s"].tobytes(), B_SHARE: state["own_b"].tobytes()}
            blob, pos = state["inbox"].tobytes(), 0
            for v, size in zip(state["inbox_ids"], state["inbox_sizes"]):
                client._inbox[int(v)] = blob[pos:pos + int(size)]
                pos += int(size)
            return client
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise SecAggError(f"this client's secure-aggregation state is damaged: {e}") from e

    def _next(self, stage: int, what: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"client {self.cid} was asked to {what} at stage {self.stage}; the protocol's order is "
                              "advertise, share keys, masked input, unmask, once each")
        self.stage += 1

    def _mine(self, ids) -> set[int]:
        return {v for v in ids if self.neighbours is None or v in self.neighbours}

    def advertise(self) -> tuple[bytes, bytes]:
        self._next(0, "advertise its keys")
        return public_bytes(self._c), public_bytes(self._s)

    def share_keys(self, keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        self._next(1, "share its keys")
        peers = self._mine(keys)
        if self.cid not in peers or len(peers) < self.t:
            raise SecAggError(f"client {self.cid} sees {len(peers)} neighbours' keys, fewer than the threshold {self.t}")
        flat = [k for v in peers for k in keys[v]]
        if len(set(flat)) != len(flat):
            raise SecAggError("two clients advertised the same public key")
        self._keys = {v: keys[v] for v in peers}
        self._b = new_seed()
        xs = sorted(_x(v) for v in peers)
        s_shares, b_shares = split(private_bytes(self._s), self.t, xs), split(self._b, self.t, xs)
        out = {}
        for v in sorted(peers):
            payload = self.cid.to_bytes(8, "big") + v.to_bytes(8, "big") + s_shares[_x(v)] + b_shares[_x(v)]
            if v == self.cid:
                self._own = {KEY_SHARE: s_shares[_x(v)], B_SHARE: b_shares[_x(v)]}
            else:
                key = agree(self._c, keys[v][0], b"share")
                out[v] = encrypt(key, payload, aad=b"%d->%d" % (self.cid, v))
        return out

    def masked_input(self, x: np.ndarray, inbox: Mapping[int, bytes]) -> np.ndarray:
        """``x`` (uint32, already quantized) masked; ``inbox``: the shares sent to this client."""
        self._next(2, "send its masked input")
        if not (isinstance(x, np.ndarray) and x.dtype == np.uint32 and x.ndim == 1):
            raise SecAggError("the input to mask must be a 1-d uint32 vector (quantized)")
        senders = self._mine(inbox) & set(self._keys)
        if len(senders) + 1 < self.t:
            raise SecAggError(f"client {self.cid} received shares from {len(senders)} neighbours; with itself that is "
                              f"below the threshold {self.t}")
        self._inbox = {v: inbox[v] for v in senders}
        y = x + prg(self._b, x.size)
        for v in sorted(senders):
            mask = prg(agree(self._s, self._keys[v][1], b"mask"), x.size)
            y = y + mask if self.cid < v else y - mask  # uint32 arithmetic wraps: mod 2^32
        return y

    def unmask(self, survivors: set[int], dropped: set[int]) -> dict[int, tuple[str, bytes]]:
        """The one share the server may have of each neighbour: its self-mask seed if it survived,
        its mask key if it dropped. Asked for both of one client, the client refuses."""
        self._next(3, "unmask")
        survivors, dropped = set(survivors), set(dropped)
        both = survivors & dropped
        if both:
            raise SecAggError(f"client {self.cid} was asked for both shares of client(s) {sorted(both)[:5]}: refused, "
                              "as together they would unmask that client's input")
        if self.cid in dropped:
            raise SecAggError(f"client {self.cid} is alive but was reported dropped: refused")
        alive = self._mine(survivors) & (set(self._inbox) | {self.cid})
        if len(alive) < self.t:
            raise SecAggError(f"only {len(alive)} of client {self.cid}'s neighbours survive, below the threshold {self.t}")
        out: dict[int, tuple[str, bytes]] = {}
        for v in self._mine(survivors | dropped):
            if v == self.cid:
                out[v] = (B_SHARE, self._own[B_SHARE])
                continue
            if v not in self._inbox:
                continue
            key = agree(self._c, self._keys[v][0], b"share")
            payload = decrypt(key, self._inbox[v], aad=b"%d->%d" % (v, self.cid))
            if int.from_bytes(payload[:8], "big") != v or int.from_bytes(payload[8:16], "big") != self.cid:
                raise SecAggError(f"the share client {self.cid} holds from client {v} names other clients")
            s_share, b_share = payload[16:16 + SHARE_BYTES], payload[16 + SHARE_BYTES:]
            out[v] = (B_SHARE, b_share) if v in survivors else (KEY_SHARE, s_share)
        return out


class SecAggServer:
    """The server's side of one round: it routes, and learns only the sum of the survivors' inputs."""

    def __init__(self, threshold: int, length: int, neighbours: Mapping[int, frozenset[int]] | None = None) -> None:
        if not (isinstance(threshold, int) and threshold >= 2):
            raise SecAggError(f"the threshold is {threshold!r}; expected an integer >= 2")
        self.t, self.length, self.neighbours = threshold, length, neighbours
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.shared: set[int] = set()
        self.masked: dict[int, np.ndarray] = {}

    def _enough(self, ids, stage: str) -> None:
        if len(ids) < self.t:
            raise SecAggError(f"secure aggregation needs at least t = {self.t} clients at every stage; only "
                              f"{len(ids)} {stage}. The round has no output")

    def collect_keys(self, keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, tuple[bytes, bytes]]:
        self._enough(keys, "advertised their keys")
        for cid, pair in keys.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(k, bytes) and len(k) == 32 for k in pair)):
                raise SecAggError(f"client {cid} advertised malformed keys")
        self.keys = dict(keys)
        return self.keys

    def route(self, sent: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Each client's inbox: the ciphertexts addressed to it by the clients that shared."""
        self._enough(sent, "shared their keys")
        self.shared = set(sent) & set(self.keys)
        inbox: dict[int, dict[int, bytes]] = {v: {} for v in self.shared}
        for u in self.shared:
            for v, ct in sent[u].items():
                if v in inbox:
                    inbox[v][u] = ct
        return inbox

    def collect_masked(self, ys: Mapping[int, np.ndarray]) -> tuple[set[int], set[int]]:
        survivors = set(ys) & self.shared
        self._enough(survivors, "sent their masked inputs")
        for u in survivors:
            y = ys[u]
            if not (isinstance(y, np.ndarray) and y.dtype == np.uint32 and y.shape == (self.length,)):
                raise SecAggError(f"client {u}'s masked input is not a uint32 vector of length {self.length}")
        self.masked = {u: ys[u] for u in survivors}
        return survivors, self.shared - survivors

    def unmask(self, reveals: Mapping[int, Mapping[int, tuple[str, bytes]]]) -> np.ndarray:
        """Σ x_u (mod 2^32) over the survivors, from the shares that at least t of them revealed."""
        responders = set(reveals) & set(self.masked)
        self._enough(responders, "answered the unmasking request")
        survivors, dropped = set(self.masked), self.shared - set(self.masked)
        total = np.zeros(self.length, np.uint32)
        for y in self.masked.values():
            total += y
        for v in survivors | dropped:
            kind = B_SHARE if v in survivors else KEY_SHARE
            shares = {}
            for w in responders:
                got = reveals[w].get(v)
                if got is not None:
                    if got[0] != kind:
                        raise SecAggError(f"client {w} revealed a {got[0]!r} share of client {v}; {kind!r} was asked")
                    shares[_x(w)] = got[1]
            secret = self._rebuild(v, shares)
            if v in survivors:
                total -= prg(secret, self.length)
            else:  # remove the pairwise masks the survivors added for v
                key = private_from(secret)
                for u in survivors:
                    if self.neighbours is not None and v not in self.neighbours[u]:
                        continue
                    mask = prg(agree(key, self.keys[u][1], b"mask"), self.length)
                    total = total - mask if u < v else total + mask
        return total

    def _rebuild(self, v: int, shares: dict[int, bytes]) -> bytes:
        if len(shares) < self.t:
            raise SecAggError(f"only {len(shares)} shares of client {v}'s secret came back, below t = {self.t}: the "
                              "round has no output")
        return combine(shares, self.t, SEED_BYTES)


# --- fixed-point encoding into the ring Z_{2^32} ----------------------------------------------
def bits_for(clients: int) -> int:
    """Bits per value so that the sum of ``clients`` values cannot wrap around 2^32."""
    return 32 - math.ceil(math.log2(clients + 1))


def quantize(values: np.ndarray, clip_range: float, bits: int, generator: np.random.Generator) -> np.ndarray:
    """``values`` clipped to [−clip_range, clip_range] and mapped to integers 0 .. 2^bits − 1 with
    unbiased stochastic rounding, as uint32."""
    top = float(2**bits - 1)
    scaled = (np.clip(np.asarray(values, np.float64), -clip_range, clip_range) + clip_range) / (2 * clip_range) * top
    return np.minimum(np.floor(scaled + generator.random(scaled.shape)), top).astype(np.uint32)


def dequantize_sum(total: np.ndarray, clients: int, clip_range: float, bits: int) -> np.ndarray:
    """The float sum of ``clients`` quantized vectors from their sum in the ring."""
    top = float(2**bits - 1)
    return total.astype(np.float64) / top * (2 * clip_range) - clients * clip_range


# --- exact integer sums: int64 values as four 16-bit limbs, each in a uint32 slot --------------
LIMBS, LIMB_BITS = 4, 16
MAX_EXACT_CLIENTS = 2**16  # limb sums of this many clients stay below 2^32: none wraps


def to_limbs(values: np.ndarray) -> np.ndarray:
    """int64 ``values`` (two's complement) as uint32 limbs, least significant first: the sum of up to
    2^16 clients' limbs recombines (:func:`from_limbs`) to the exact sum mod 2^64."""
    v = np.asarray(values, np.int64).view(np.uint64)
    return np.stack([((v >> np.uint64(LIMB_BITS * k)) & np.uint64(0xFFFF)).astype(np.uint32) for k in range(LIMBS)],
                    axis=1).reshape(-1)


def from_limbs(total: np.ndarray) -> np.ndarray:
    """The int64 sums from the limbs' sum in the ring."""
    limbs = np.asarray(total, np.uint32).reshape(-1, LIMBS).astype(np.uint64)
    out = np.zeros(len(limbs), np.uint64)
    for k in range(LIMBS):  # uint64 arithmetic wraps: mod 2^64, as the int64 sum
        out += limbs[:, k] << np.uint64(LIMB_BITS * k)
    return out.view(np.int64)
