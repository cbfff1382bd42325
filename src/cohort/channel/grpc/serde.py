"""Named array groups and outcomes to and from bytes, and bytes to and from bounded chunks."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from cohort.core.errors import TransportError
from cohort.core.types import ClientFailure, EvaluateResult, FailureStage, Groups, Reply

SEP = "/"


def pack(groups: Groups) -> bytes:
    """Groups as one safetensors blob (keys ``group/name``; their order kept in the metadata)."""
    from safetensors.numpy import save

    flat = {f"{g}{SEP}{k}": np.ascontiguousarray(a) for g, arrays in groups.items() for k, a in arrays.items()}
    if not flat:
        return b""
    return save(flat, metadata={"order": json.dumps(list(flat))})


def unpack(blob: bytes) -> dict[str, dict[str, np.ndarray]]:
    from safetensors.numpy import load

    if not blob:
        return {}
    try:
        arrays = load(blob)
        order = _order(blob) or list(arrays)
    except Exception as e:  # anything a hostile peer can send: refuse, do not crash
        raise TransportError(f"the arrays payload is not valid safetensors: {type(e).__name__}: {e}") from e
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in order:
        g, _, name = key.partition(SEP)
        out.setdefault(g, {})[name] = arrays[key]
    return out


def _order(blob: bytes) -> list[str] | None:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    order = (header.get("__metadata__") or {}).get("order")
    return json.loads(order) if order else None


def join(parts: list[bytes]) -> bytes:
    return b"".join(parts)


def split(blob: bytes, chunk_bytes: int) -> list[bytes]:
    """``blob`` in pieces of at most ``chunk_bytes`` (at least one piece, maybe empty)."""
    if not blob:
        return [b""]
    return [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)]


def outcome_meta(outcome: Any) -> tuple[dict[str, Any], Groups]:
    """What a client sends back: JSON-able facts and the groups (if any)."""
    if isinstance(outcome, Reply):
        return {"kind": "reply", "num_examples": _plain(outcome.num_examples), "metrics": _metrics(outcome.metrics)}, outcome.arrays
    if isinstance(outcome, EvaluateResult):
        return {"kind": "evaluate", "loss": _plain(outcome.loss), "num_examples": _plain(outcome.num_examples),
                "metrics": _metrics(outcome.metrics)}, {}
    return {"kind": "failure", "stage": str(outcome.stage), "reason": str(outcome.reason)[:2000]}, {}


def outcome_from(meta: Mapping[str, Any], groups: Groups, client_id: int, version: int):
    kind = meta.get("kind")
    if kind == "reply":
        return Reply(groups, meta.get("num_examples"), meta.get("metrics") or {}, version)
    if kind == "evaluate":
        return EvaluateResult(meta.get("loss"), meta.get("num_examples"), meta.get("metrics") or {})
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


def chunks_of(blob: bytes, chunk_bytes: int) -> Iterator[tuple[bytes, bool]]:
    pieces = split(blob, chunk_bytes)
    for i, piece in enumerate(pieces):
        yield piece, i == len(pieces) - 1
