"""The largest result a server accepts from a client: derived from the model it sends.

A result's size is announced before its bytes (the stream's Header), so a result over the limit is
refused before any byte of it is buffered. The limit is the most an honest client can send back: the
groups the algorithm folds (its aggregators' keys, in the global arrays' dtypes), as the update's
compression encodes them, under secure aggregation the masked vector, plus the safetensors framing.

Before the model is known (a site federation agrees its data first, with the clients connected) and
for the small exchanges of secure aggregation (public keys, encrypted shares) and of the data
statistics, a fixed floor applies: :data:`FLOOR_BYTES`. A model-derived limit never goes below it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from cohort.core.errors import ConfigError

FLOOR_BYTES = 16 * 2**20  # room for the key, share and statistics exchanges, which come before or beside the model
ARRAY_FRAMING = 256  # safetensors header bytes per array beside its name (dtype, shape, byte range, JSON)
SECURE_EXTRA = 4096  # coordinates a masked vector carries after the model delta (flags, metric slots)
TOPK_GAP = 65535  # top-k's index gaps are uint16: a longer gap costs one more entry


def _array_bytes(a: np.ndarray, compression: str, topk_fraction: float) -> int:
    """The most bytes ``a``'s update takes on the wire under ``compression`` (client/compression.py)."""
    if a.dtype.kind != "f" or compression in ("none", "fp16"):  # fp16 never grows a float array
        return a.nbytes
    if compression == "int8":  # one byte a value, and its two float64 bounds as an extra array
        return a.size + 16 + ARRAY_FRAMING
    if compression == "topk":  # float16 value + uint16 index gap an entry, bridges for long gaps
        entries = max(1, round(topk_fraction * a.size)) + a.size // TOPK_GAP + 1
        return 4 * entries + ARRAY_FRAMING
    raise ConfigError(f"compression.kind is {compression!r}; expected none, fp16, int8 or topk")


def update_limit(groups: Mapping[str, Mapping[str, np.ndarray]], returned: Iterable[str], *,
                 compression: str = "none", topk_fraction: float = 1.0, secure_group: str | None = None) -> int:
    """The largest result (payload bytes) an honest client sends for a model of ``groups``, of which it
    returns the groups ``returned``; ``secure_group``: under secure aggregation, the group whose
    parameters are masked as one uint32 vector."""
    total = 8 + 1024  # the header's length and its metadata (the arrays' order)
    for g in returned:
        for name, a in groups[g].items():
            total += _array_bytes(np.asarray(a), compression, topk_fraction) + ARRAY_FRAMING + 2 * (len(g) + len(name) + 1)
    if secure_group is not None:
        params = sum(math.prod(np.shape(a)) for a in groups[secure_group].values())
        total = max(total, 4 * (params + SECURE_EXTRA) + 64 * ARRAY_FRAMING)
    return max(FLOOR_BYTES, total)


def describe(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
