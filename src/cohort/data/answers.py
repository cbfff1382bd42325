"""The sites' answers, as both statistics exchanges ask for them and check them: the plain one
(:mod:`cohort.data.exchange`) and the one under secure aggregation (:mod:`cohort.data.exchange_secure`).

Every answer carries its arrays in the reply group ``site``; a document travels as JSON in a uint8
array. An answer is hostile input: :func:`ask` names every client that failed or answered wrongly,
and the checks bound what a site may claim (its row counts, its categories).
"""

from __future__ import annotations

import json
import math

import numpy as np

from cohort.core.errors import DataError
from cohort.core.types import ClientFailure, Instruction, Message, Reply

GROUP = "site"  # the reply group of the exchange
MAX_JSON_BYTES = 4 * 2**20
MAX_ROWS = 10**9  # rows one site may report
MAX_CATEGORIES = 10_000  # values per categorical column, and classes of a target


def to_json_bytes(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value, allow_nan=False).encode(), np.uint8).copy()


def from_json_bytes(a, what: str):
    if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 1 and a.size <= MAX_JSON_BYTES):
        raise ValueError(f"{what} is not a JSON document of at most {MAX_JSON_BYTES} bytes (uint8)")
    try:
        return json.loads(a.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} is JSON nested too deeply") from None


def ask(channel, task: str, config: dict, ids: list[int], timeout_s, read) -> dict:
    """Run ``task`` with clients ``ids``; ``read(reply, client id)`` checks each answer (ValueError: refused).
    Raises DataError naming every client that failed or answered wrongly."""
    instructions = [Instruction(c, {}) for c in ids]
    out, problems = {}, []
    for pos, outcome in channel.run(Message(task, {}, config, 0), instructions, timeout_s):
        cid = instructions[pos].client_id
        if isinstance(outcome, ClientFailure):
            problems.append(f"client {cid}: {outcome.reason}")
            continue
        try:
            if not (isinstance(outcome, Reply) and isinstance(outcome.arrays, dict) and isinstance(outcome.arrays.get(GROUP), dict)):
                raise ValueError(f"no {GROUP!r} group in its answer")
            out[cid] = read(outcome, cid)
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            problems.append(f"client {cid}: {e if not isinstance(e, RecursionError) else 'its JSON is nested too deeply'}")
    if problems:
        raise DataError(f"the sites could not agree their data ({task}): " + "; ".join(problems))
    return out


def row_counts(metrics) -> tuple[int, int]:
    """A site's (training rows, held-out rows), checked: whole numbers, at least one training row, at
    most MAX_ROWS each."""
    rows = metrics.get("rows_train"), metrics.get("rows_held")
    if (not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x <= MAX_ROWS
                and x == int(x) for x in rows) or rows[0] < 1):
        raise ValueError(f"its row counts (rows_train, rows_held) are not whole numbers from 1 (training) to {MAX_ROWS:,}")
    return int(rows[0]), int(rows[1])


def check_categories(cats, cfg, what: str = "category counts", counts: bool = True) -> dict:
    """A site's categories: only the declared categorical columns, at most MAX_CATEGORIES values each."""
    ok = isinstance(cats, dict) and all(isinstance(c, (dict if counts else list)) for c in cats.values())
    if ok:
        for name, values in cats.items():
            items = values.items() if counts else [(v, 0) for v in values]
            if (name not in cfg.categorical or len(values) > MAX_CATEGORIES
                    or not all(isinstance(k, str) and len(k) <= 200 and isinstance(v, int) and not isinstance(v, bool)
                               and 0 <= v <= MAX_ROWS for k, v in items)):
                ok = False
    if not ok:
        raise ValueError(f"its {what} are not {{column: values}} over the declared categorical columns "
                         f"({list(cfg.categorical)}), at most {MAX_CATEGORIES:,} values of at most 200 characters each")
    return cats
