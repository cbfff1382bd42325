"""Compression of the model update on the way up, decoded by the server before anything else.

- ``fp16``: every float array as float16 (2 bytes per value);
- ``int8``: unbiased stochastic quantization to 256 levels between each array's min and max
  (1 byte per value, plus the two bounds);
- ``topk``: the ``topk_fraction`` largest entries by magnitude, with error feedback: what was not
  sent (and what rounding the sent values to float16 lost) is kept in the client's own state and
  added to its next update, so nothing is lost over the rounds (Stich et al. 2018). An entry costs 4
  bytes: its value as float16 and the gap to the previous entry's index as uint16 (a gap over 65,535
  is bridged by an entry of value 0), so 10% of the entries is 10× fewer bytes than float32.

The client compresses in its runtime after training (and after local DP's noise); the arrays that
travel are the compressed ones, so the channels count exactly the bytes sent. The server decodes
each reply into the dense delta in the global arrays' dtypes before validation, so robust
aggregation, central DP and secure aggregation see ordinary deltas.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError, UpdateRejected
from cohort.core.records import COMPRESSION

KINDS = ("none", "fp16", "int8", "topk")
SCALE, INDEX = "::bounds", "::index"
RESIDUAL = "compression_residual"


def check(kind: str, topk_fraction: float) -> None:
    if kind not in KINDS:
        raise ConfigError(f"compression.kind is {kind!r}; expected one of {', '.join(KINDS)}")
    if not (isinstance(topk_fraction, (int, float)) and not isinstance(topk_fraction, bool) and 0 < topk_fraction <= 1):
        raise ConfigError(f"compression.topk_fraction is {topk_fraction!r}; expected 0 < fraction <= 1")


def compress(delta: NamedArrays, kind: str, topk_fraction: float, g: np.random.Generator,
             residual: NamedArrays | None = None) -> tuple[NamedArrays, NamedArrays | None]:
    """(the arrays to send, the new residual for top-k's error feedback, else None)."""
    if kind == "fp16":
        return {k: a.astype(np.float16) if a.dtype.kind == "f" else a for k, a in delta.items()}, None
    if kind == "int8":
        out = {}
        for k, a in delta.items():
            if a.dtype.kind != "f" or a.size == 0:
                out[k] = a
                continue
            lo, hi = float(a.min()), float(a.max())
            span = (hi - lo) or 1.0
            scaled = (a.astype(np.float64) - lo) / span * 255.0
            q = np.floor(scaled + g.random(a.shape))  # stochastic rounding: E[q] = scaled
            out[k] = np.clip(q, 0, 255).astype(np.uint8)
            out[k + SCALE] = np.array([lo, hi], np.float64)
        return out, None
    if kind == "topk":
        out, left = {}, {}
        for k, a in delta.items():
            if a.dtype.kind != "f" or a.size == 0:
                out[k] = a
                continue
            full = a.astype(np.float64).ravel() + (residual[k].ravel() if residual and k in residual else 0.0)
            keep = max(1, int(round(topk_fraction * full.size)))
            idx = np.sort(np.argpartition(np.abs(full), full.size - keep)[full.size - keep:])
            idx = _bridged(idx)
            values = full[idx].astype(np.float16)
            out[k] = values
            out[k + INDEX] = np.diff(idx, prepend=-1).astype(np.uint16)
            rest = full.copy()
            rest[idx] -= values.astype(np.float64)  # what float16 rounding lost is kept too
            left[k] = rest.reshape(a.shape)
        return out, left
    return delta, None


def _bridged(idx: np.ndarray) -> np.ndarray:
    """Sorted indices with extra ones inserted so that no gap (from -1 for the first) exceeds 65,535."""
    gaps = np.diff(idx, prepend=-1)
    if gaps.max(initial=0) <= 65535:
        return idx
    out, prev = [], -1
    for i in idx.tolist():
        while i - prev > 65535:
            prev += 65535
            out.append(prev)
        out.append(i)
        prev = i
    return np.array(out, np.int64)


def decompress(arrays: NamedArrays, like: NamedArrays, kind: str) -> NamedArrays:
    """The dense delta, in ``like``'s shapes and dtypes; anything malformed is refused."""
    if kind == "none":
        return arrays
    out = {}
    try:
        for k, ref in like.items():
            a = arrays[k]
            if ref.dtype.kind != "f":
                out[k] = a
                continue
            if kind == "fp16":
                if a.dtype != np.float16 or a.shape != ref.shape:
                    raise ValueError(f"{k!r} is not float16 of shape {ref.shape}")
                out[k] = a.astype(ref.dtype)
            elif kind == "int8":
                bounds = arrays[k + SCALE] if ref.size else None
                if ref.size == 0:
                    out[k] = np.zeros(ref.shape, ref.dtype)
                    continue
                if a.dtype != np.uint8 or a.shape != ref.shape or bounds.shape != (2,) or not np.isfinite(bounds).all():
                    raise ValueError(f"{k!r} is not 8-bit codes of shape {ref.shape} with two finite bounds")
                lo, hi = float(bounds[0]), float(bounds[1])
                out[k] = (lo + a.astype(np.float64) / 255.0 * ((hi - lo) or 1.0) * (hi != lo)).astype(ref.dtype)
            else:
                if ref.size == 0:
                    out[k] = np.zeros(ref.shape, ref.dtype)
                    continue
                gaps = arrays[k + INDEX]
                if gaps.dtype != np.uint16 or a.dtype != np.float16 or gaps.shape != a.shape or a.ndim != 1:
                    raise ValueError(f"{k!r} is not float16 top-k values with uint16 index gaps of the same length")
                idx = np.cumsum(gaps.astype(np.int64)) - 1
                if idx.size and (gaps.min() < 1 or idx[-1] >= ref.size):
                    raise ValueError(f"{k!r}'s index gaps do not fall strictly inside its {ref.size} entries")
                if not np.isfinite(a).all():
                    raise ValueError(f"{k!r} holds non-finite values")
                dense = np.zeros(ref.size, np.float64)
                dense[idx] = a.astype(np.float64)
                out[k] = dense.reshape(ref.shape).astype(ref.dtype)
    except (KeyError, ValueError, AttributeError) as e:
        raise UpdateRejected(f"a {kind}-compressed update does not decode: {e}") from e
    return out


def with_compression(algorithm, kind: str, topk_fraction: float = 0.01):
    """``algorithm`` (read by its fields, as ``with_privacy`` does) with its model updates sent compressed:
    the clients learn the encoding from every message's config, and the model's pipeline decodes each
    update before validating it. Nothing else in the server knows."""
    check(kind, topk_fraction)
    if kind == "none":
        return algorithm
    algorithm = algorithm.with_model_pipeline(decode=partial(decompress, kind=kind))
    return replace(algorithm, config={**algorithm.config, COMPRESSION: {"kind": kind, "topk_fraction": topk_fraction}})
