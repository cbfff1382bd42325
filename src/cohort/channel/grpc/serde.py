"""Named array groups and outcomes to and from bytes, and bytes to and from bounded chunks."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from cohort.core.errors import TransportError
from cohort.core.types import ClientFailure, EvaluateResult, FailureStage, Groups, Reply

SEP = "/"
# HTTP/2 frames of up to 16 MiB instead of 16 KiB, both ends: a 4 MiB chunk crosses in one frame
# (measured: about 1.3x the throughput of the default on loopback)
WIRE_OPTIONS = [("grpc.http2.max_frame_size", 2**24 - 1)]
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is refused unread

# Arrays travel in the safetensors format (8 bytes of little-endian header length, a JSON header of
# dtype, shape and byte range per tensor, then the raw little-endian bytes), but are written and read
# here rather than with ``safetensors.numpy.save``/``load``: those need the whole payload as one
# bytes object in both directions, which for a 100 MB model cost two extra full copies and about
# 160 ms of a 350 ms transfer (measured by bench/deploy_throughput.py). Here each array's memory is
# cut straight into chunks, and each received tensor is filled straight from the chunks: one copy
# each way. The output stays a valid safetensors file (tested against the library).
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
           "BOOL": np.bool_}
_CODES = {np.dtype(v).str.lstrip("<>|="): k for k, v in _DTYPES.items()}


def _code(a: np.ndarray) -> str:
    code = _CODES.get(a.dtype.str.lstrip("<>|="))
    if code is None or a.dtype.byteorder == ">":
        raise TransportError(f"arrays of dtype {a.dtype} cannot be sent; use a little-endian numeric or bool dtype")
    return code


def encode(groups: Groups, chunk_bytes: int) -> tuple[int, Iterator[bytes]]:
    """Groups as a safetensors payload (keys ``group/name``; their order kept in the metadata), cut into
    pieces of at most ``chunk_bytes``. Returns (payload length, the pieces, made as they are taken, so
    that sending can start before the last is cut); no groups: (0, [b""])."""
    total, sources = layout(groups)
    return total, (cut(sources, chunk_bytes) if total else iter([b""]))


def layout(groups: Groups) -> tuple[int, list[memoryview]]:
    """Groups as a safetensors payload that is not copied: its length, and the memory it is made of in
    order (the header, then each array's own bytes). No groups: (0, [])."""
    # np.require keeps a 0-d array 0-d (np.ascontiguousarray would make it 1-d)
    flat = {f"{g}{SEP}{k}": np.require(a, requirements="C") for g, arrays in groups.items() for k, a in arrays.items()}
    if not flat:
        return 0, []
    header: dict[str, Any] = {"__metadata__": {"order": json.dumps(list(flat))}}
    offset = 0
    for key, a in flat.items():
        header[key] = {"dtype": _code(a), "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # as safetensors does: the data starts 8-byte aligned
    sources = [memoryview(len(head).to_bytes(8, "little") + head)]
    sources += [memoryview(a.reshape(-1)).cast("B") for a in flat.values() if a.nbytes]
    return 8 + len(head) + offset, sources


def cut(sources: list[memoryview], size: int) -> Iterator[bytes]:
    """The concatenation of ``sources`` in pieces of ``size`` bytes (the last may be shorter); large
    sources are sliced directly, small ones gathered, so each byte is copied once."""
    pending = bytearray()
    for mv in sources:
        pos = 0
        if pending:
            take = min(size - len(pending), len(mv))
            pending += mv[:take]
            pos = take
            if len(pending) == size:
                yield bytes(pending)
                pending = bytearray()
        while len(mv) - pos >= size:
            yield bytes(mv[pos:pos + size])
            pos += size
        pending += mv[pos:]
    if pending:
        yield bytes(pending)


class _Pieces:
    """Byte ranges of a payload that arrived as a list of chunks, read without joining them."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [p for p in pieces if len(p)]
        self.starts = []
        total = 0
        for p in self.pieces:
            self.starts.append(total)
            total += len(p)
        self.total = total

    def copy_into(self, start: int, out: memoryview) -> None:
        """``out`` filled with the payload's bytes from ``start``."""
        i = max(0, bisect.bisect_right(self.starts, start) - 1)
        done = 0
        while done < len(out):
            piece, base = self.pieces[i], self.starts[i]
            lo = start + done - base
            n = min(len(piece) - lo, len(out) - done)
            out[done:done + n] = memoryview(piece)[lo:lo + n]
            done += n
            i += 1

    def read(self, start: int, n: int) -> bytes:
        buf = bytearray(n)
        self.copy_into(start, memoryview(buf))
        return bytes(buf)


def decode(pieces: list[bytes] | list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The groups of a payload that :func:`encode` (or any safetensors writer) made, from its pieces.
    Given one writable uint8 array (a payload received whole), the arrays are views into it where
    their alignment allows, not copies. Anything malformed raises TransportError: a hostile peer is
    refused, never trusted."""
    whole = pieces[0] if len(pieces) == 1 and isinstance(pieces[0], np.ndarray) else None
    data = _Pieces(pieces)
    if data.total == 0:
        return {}
    try:
        if data.total < 8:
            raise ValueError("shorter than its 8-byte header length")
        n = int.from_bytes(data.read(0, 8), "little")
        if n > min(MAX_HEADER_BYTES, data.total - 8):
            raise ValueError(f"header length {n} is past the end of the {data.total}-byte payload")
        header = json.loads(data.read(8, n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        order = json.loads(meta["order"]) if isinstance(meta, dict) and "order" in meta else sorted(header)
        if not (isinstance(order, list) and sorted(order) == sorted(header)):
            raise ValueError("the metadata's order does not list exactly the tensors")
        body = data.total - 8 - n
        spans = []
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in order:
            info = header[key]
            dtype = _DTYPES[info["dtype"]]
            shape, (lo, hi) = tuple(info["shape"]), info["data_offsets"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (*shape, lo, hi)):
                raise ValueError(f"tensor {key!r} has a non-integer shape or byte range")
            if any(d < 0 for d in shape) or not 0 <= lo <= hi <= body:
                raise ValueError(f"tensor {key!r} has shape {shape} and byte range [{lo}, {hi}) in a body of {body} bytes")
            count = math.prod(shape)
            if count * np.dtype(dtype).itemsize != hi - lo:
                raise ValueError(f"tensor {key!r} of shape {shape} and dtype {info['dtype']} does not fill its {hi - lo} bytes")
            spans.append((lo, hi))
            start = 8 + n + lo
            if whole is not None and start % np.dtype(dtype).itemsize == 0:
                array = whole[start:start + hi - lo].view(dtype).reshape(shape)
            else:
                array = np.empty(shape, dtype)
                if count:
                    data.copy_into(start, memoryview(array.reshape(-1)).cast("B"))
            g, _, name = key.partition(SEP)
            out.setdefault(g, {})[name] = array
        spans.sort()
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise ValueError("tensors overlap")
        return out
    except (ValueError, KeyError, TypeError, OverflowError) as e:  # anything a hostile peer can send
        raise TransportError(f"the arrays payload is not valid safetensors: {type(e).__name__}: {e}") from e


def _seconds(value: Any) -> float:
    """A client's reported task time: informative only, so anything but a finite number >= 0 is 0."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9 else 0.0


def outcome_meta(outcome: Any) -> tuple[dict[str, Any], Groups]:
    """What a client sends back: JSON-able facts and the groups (if any)."""
    if isinstance(outcome, Reply):
        return {"kind": "reply", "num_examples": _plain(outcome.num_examples), "metrics": _metrics(outcome.metrics),
                "seconds": _seconds(outcome.seconds)}, outcome.arrays
    if isinstance(outcome, EvaluateResult):
        return {"kind": "evaluate", "loss": _plain(outcome.loss), "num_examples": _plain(outcome.num_examples),
                "metrics": _metrics(outcome.metrics), "seconds": _seconds(outcome.seconds)}, {}
    return {"kind": "failure", "stage": str(outcome.stage), "reason": str(outcome.reason)[:2000]}, {}


def outcome_from(meta: Mapping[str, Any], groups: Groups, client_id: int, version: int):
    kind = meta.get("kind")
    if kind == "reply":
        return Reply(groups, meta.get("num_examples"), meta.get("metrics") or {}, version, _seconds(meta.get("seconds")))
    if kind == "evaluate":
        return EvaluateResult(meta.get("loss"), meta.get("num_examples"), meta.get("metrics") or {}, _seconds(meta.get("seconds")))
    if kind == "failure":
        stage = meta.get("stage")
        stage = FailureStage(stage) if stage in {s.value for s in FailureStage} else FailureStage.TASK
        return ClientFailure(client_id, stage, f"(reported by the client) {meta.get('reason')}")
    return ClientFailure(client_id, FailureStage.VALIDATE, f"the client sent a result of unknown kind {kind!r}")


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _metrics(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        return {}
    out = {}
    for k, v in metrics.items():
        v = _plain(v)
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = v
    return out
