"""Named arrays: the one currency between client and server.

``NamedArrays`` is an ordered ``dict[str, np.ndarray]``, in the order of the model's ``state_dict``.
All conversions (torch, flat vectors, safetensors files and bytes) live here as named functions. torch
is imported only inside the torch conversions, so the core stays importable without it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cohort.core.errors import UpdateRejected

if TYPE_CHECKING:  # pragma: no cover
    import torch

NamedArrays = dict[str, np.ndarray]


def from_torch(state_dict: Mapping[str, "torch.Tensor"]) -> NamedArrays:
    """Copy a torch ``state_dict`` (parameters and buffers) into named numpy arrays, dtypes kept."""
    return {name: t.detach().cpu().numpy().copy() for name, t in state_dict.items()}


def to_torch(arrays: Mapping[str, np.ndarray]) -> dict[str, "torch.Tensor"]:
    """Named arrays as a torch ``state_dict``: writable arrays are viewed without copying; read-only ones
    (what cohort hands a client) are copied, since a tensor over read-only memory cannot be trained in
    place (torch warns on every such view, and an in-place step would write to shared memory)."""
    import torch

    return {name: torch.from_numpy(np.asarray(a, order="C") if a.flags.writeable else np.array(a, order="C"))
            for name, a in ((n, np.asarray(x)) for n, x in arrays.items())}


def nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Payload size of the arrays as raw tensors: what a model or an update costs on the wire."""
    return sum(a.nbytes for a in arrays.values())


def num_parameters(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(a.size for a in arrays.values())


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> NamedArrays:
    """``a - b`` key by key: a client's delta is ``subtract(client_arrays, global_arrays)``."""
    return {name: np.subtract(a[name], b[name]) for name in b}


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> NamedArrays:
    """``a + b`` key by key, in ``a``'s dtypes (integer entries such as batch counters are rounded)."""
    return {name: _cast(np.add(x, b[name]), x.dtype) for name, x in a.items()}


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iub" and values.dtype.kind == "f":
        values = np.rint(values)
    return values.astype(dtype, copy=False)


def flatten(arrays: Mapping[str, np.ndarray], dtype: np.dtype | type = np.float64) -> np.ndarray:
    """One 1-D vector of every entry, in key order."""
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays.values()])


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> NamedArrays:
    """Inverse of :func:`flatten`: cut ``vector`` into the shapes and dtypes of ``like``."""
    expected = num_parameters(like)
    if vector.ndim != 1 or vector.size != expected:
        raise ValueError(f"vector has shape {vector.shape}; expected ({expected},) to fill {len(like)} arrays")
    out, start = {}, 0
    for name, a in like.items():
        out[name] = vector[start : start + a.size].reshape(a.shape).astype(a.dtype, copy=True)
        start += a.size
    return out


Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


def spec_of(arrays: Mapping[str, np.ndarray]) -> Spec:
    """Names, shapes and dtypes of arrays: what an update is checked against, without the values."""
    return {name: (tuple(a.shape), a.dtype) for name, a in arrays.items()}


def check_like(arrays: object, spec: Spec, *, what: str = "update") -> None:
    """Raise :class:`UpdateRejected` unless ``arrays`` has exactly the names and shapes of ``spec``,
    a compatible numeric dtype, and only finite values."""
    if not isinstance(arrays, Mapping):
        raise UpdateRejected(f"{what} is a {type(arrays).__name__}; expected a dict of named numpy arrays")
    missing = [k for k in spec if k not in arrays]
    extra = [k for k in arrays if k not in spec]
    if missing or extra:
        raise UpdateRejected(f"{what} names differ from the model's: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, (shape, dtype) in spec.items():
        a = arrays[name]
        if isinstance(a, np.generic):  # a numpy scalar, e.g. from arithmetic on a 0-d array
            a = np.asarray(a)
        if not isinstance(a, np.ndarray):
            raise UpdateRejected(f"{what}[{name!r}] is a {type(a).__name__}; expected a numpy array")
        if a.shape != shape:
            raise UpdateRejected(f"{what}[{name!r}] has shape {a.shape}; expected {shape}")
        if a.dtype.kind not in "fiub" or (dtype.kind == "f" and a.dtype != dtype):
            # a float of another width is refused rather than cast: float16 would round 0.1 to 0.09998
            raise UpdateRejected(f"{what}[{name!r}] has dtype {a.dtype}; expected {dtype}, the model's "
                                 f"(cast it with .astype(np.{dtype.name}))")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise UpdateRejected(f"{what}[{name!r}] has {bad} non-finite values (NaN or inf)")


def save_safetensors(arrays: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write arrays to a safetensors file atomically (temp file + rename).

    The same arrays and metadata give the same bytes in any process, and the file gets the permissions
    of any new file (``0o666 & ~umask``).
    """
    from safetensors.numpy import save

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    # safetensors sorts tensors by name; the model's order is kept in the metadata.
    meta = {**(metadata or {}), "order": json.dumps(list(arrays))}
    blob = save({k: np.asarray(v, order="C") for k, v in arrays.items()}, metadata=meta)
    # safetensors (0.8) writes the metadata in the order of a Rust HashMap, which changes from process to
    # process (safetensors issue #584: sorting the dict here does not help), so two saves of one model
    # differ. The JSON header is rewritten in a fixed order: metadata sorted by key, tensors in the order
    # of their data. The tensor bytes are untouched; their offsets count from the end of the header.
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    tensors = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: (kv[1]["data_offsets"], kv[0]))
    canonical = {"__metadata__": dict(sorted(header.get("__metadata__", {}).items())), **dict(tensors)}
    text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # pad with spaces, as safetensors does: the data stays 8-byte aligned
    # A fresh temp file: os.open applies the umask to 0o666, as open() does (a stale temp file from a
    # crashed save would keep its old mode, so it goes first).
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            f.write(memoryview(blob)[8 + size :])
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the model
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save (a full disk) leaves no half-written temp file behind
        raise
    return path


def load_safetensors(path: str | os.PathLike) -> NamedArrays:
    """Read arrays from a safetensors file, in the order they were written.

    Raises :class:`~cohort.core.errors.DataError` if the file is not a safetensors file or its recorded
    order does not name exactly the tensors it holds; a missing file is a ``FileNotFoundError``.
    """
    from safetensors import SafetensorError, safe_open

    from cohort.core.errors import DataError

    try:
        with safe_open(str(path), framework="numpy") as f:
            names = list(f.keys())
            order = (f.metadata() or {}).get("order")
            if order is None:  # written by another tool: the file's own (sorted) order
                return {k: f.get_tensor(k) for k in names}
            try:
                keys = json.loads(order)
            except ValueError:
                keys = None
            if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
                    or len(set(keys)) != len(keys) or set(keys) != set(names)):
                raise DataError(f"{path}: the metadata 'order' {order[:200]!r} does not name exactly the "
                                f"{len(names)} tensors of the file {sorted(names)[:5]}; expected a JSON list of their names")
            return {k: f.get_tensor(k) for k in keys}
    except SafetensorError as e:
        raise DataError(f"{path} is not a readable safetensors file: {e}") from e


def norm(delta: NamedArrays) -> float:
    """The L2 norm of all the arrays together, in float64."""
    total = 0.0
    for a in delta.values():
        b = np.asarray(a, dtype=np.float64).ravel()  # one float64 copy per array (a float64 array is not copied)
        total += float(np.dot(b, b))
    return math.sqrt(total)


def clip_to(delta: NamedArrays, bound: float) -> tuple[NamedArrays, bool]:
    """``delta`` scaled to L2 norm at most ``bound``, and whether it had to be."""
    n = norm(delta)
    if n <= bound:
        return delta, False
    scale = bound / n
    return {k: (a * np.asarray(scale, a.dtype)) if a.dtype.kind == "f" else a * scale for k, a in delta.items()}, True
