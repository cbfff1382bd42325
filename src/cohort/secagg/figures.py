"""A client's figures under secure aggregation: summed with its masked vector, never sent in the clear.

Under ``[secagg]`` a client sends nothing of its own in the clear but its participation and the names
of the metrics it reports. Its example count is not sent at all. Its metrics (``train_loss``, a
held-out ``loss`` and ``accuracy``, ...) and two flags ride as extra coordinates of the vector it
masks, after its model delta, so that the server learns only their sums over the round's survivors:

    [ l2_clipped | range_clipped | slot 0 | slot 1 | ... | slot 15 ]      (uint32, summed mod 2^32)

- ``l2_clipped``: 1 if central DP's clip (the ``secagg`` record's ``l2_clip``) scaled this client's delta down: the
  sum is the number of clipped updates, which ``dp_clipped_fraction`` and adaptive clipping need;
- ``range_clipped``: 1 if a coordinate of the delta lay beyond ``±secagg.clip_range`` (cut before
  encoding): the sum says how many clients the range cut (``secagg_range_clipped``);
- one slot per metric (the names sorted, at most :data:`SLOTS`): whether this client has a finite
  value of it (1 or 0), then the value in fixed point (20 fractional bits) as four 16-bit limbs of an
  int64, so that the sum is exact for up to 2^16 clients.

The server divides each sum by the number of survivors that had a value: every client counts once,
as in the secure model mean, since the example counts that would weight them are never seen (and,
being the same every round, would be exposed by comparing sums over different cohorts). Metrics
named ``*epsilon`` are a per-client guarantee whose maximum a sum cannot give: they stay with the
client. The evaluation exchange uses the slots alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Real

import numpy as np

from cohort.secagg.protocol import LIMBS, from_limbs, to_limbs

SLOTS = 16  # metrics per client at most (sorted by name; the rest stay with the client)
FLAGS = 2  # l2_clipped, range_clipped
SLOT = 1 + LIMBS  # has-a-value, then the value's limbs
LENGTH = SLOTS * SLOT  # the metric slots
FIT_LENGTH = FLAGS + LENGTH  # what a fit reply adds after the model delta
FRACTION_BITS = 20
MAX_ABS = 2.0**42  # |value| · 2^20 · 2^16 clients stays below 2^63 (values beyond are left out)


def reported(metrics: Mapping) -> dict[str, float]:
    """The metrics a client sums: real numbers (finite or not) whose names do not end in ``epsilon``,
    the first :data:`SLOTS` by name."""
    ok = {k: v for k, v in (metrics if isinstance(metrics, Mapping) else {}).items()
          if isinstance(k, str) and len(k) <= 200 and isinstance(v, Real) and not isinstance(v, bool)
          and not k.endswith("epsilon")}
    return {k: ok[k] for k in sorted(ok)[:SLOTS]}


def encode(metrics: Mapping) -> tuple[list[str], np.ndarray]:
    """(the names, in slot order; the uint32 slots to mask)."""
    values = reported(metrics)
    out = np.zeros((SLOTS, SLOT), np.uint32)
    fixed = np.zeros(SLOTS, np.int64)
    for i, v in enumerate(values.values()):
        try:
            v = float(v)
        except OverflowError:
            continue
        if math.isfinite(v) and abs(v) < MAX_ABS:
            out[i, 0] = 1
            fixed[i] = int(round(v * 2**FRACTION_BITS))
    out[:, 1:] = to_limbs(fixed).reshape(SLOTS, LIMBS)
    return list(values), out.reshape(-1)


def decode(total: np.ndarray, names: list[str]) -> dict[str, float]:
    """Each named metric's mean over the survivors that had a value of it, from the slots' sum."""
    slots = np.asarray(total, np.uint32).reshape(SLOTS, SLOT)
    sums = from_limbs(slots[:, 1:].reshape(-1))
    out = {}
    for i, name in enumerate(names[:SLOTS]):
        count = int(slots[i, 0])
        if count > 0:
            out[name] = float(sums[i]) / 2**FRACTION_BITS / count
    return out


def names_array(names: list[str]) -> np.ndarray:
    """The names as they travel (uint8 JSON): the only thing about its metrics a client sends in the clear."""
    return np.frombuffer(json.dumps(names).encode(), np.uint8).copy()


def read_names(a) -> list[str]:
    """A reply's names, checked; ValueError if malformed."""
    if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 1 and a.size <= 64 * 1024):
        raise ValueError("its metric names are not a uint8 JSON list")
    try:
        names = json.loads(a.tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise ValueError("its metric names are not valid JSON") from None
    if not (isinstance(names, list) and len(names) <= SLOTS and all(isinstance(n, str) and len(n) <= 200 for n in names)
            and names == sorted(set(names))):
        raise ValueError(f"its metric names are not a sorted list of at most {SLOTS} distinct names")
    return names
