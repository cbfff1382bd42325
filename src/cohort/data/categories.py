"""Canonical categories: one text per category, whichever way a site wrote it.

A categorical cell is missing when it is empty, a missing-value code (``data.missing_values``,
``data.missing_by_column``) or a number that is NaN (``nan``, ``NaN``); a missing cell is no category
(all zeros in the one-hot columns) unless ``data.missing_category`` asks for one, :data:`MISSING`.

A column whose every other cell is a number is *numeric-valued*: each cell becomes its number's
canonical form (:func:`canonical_number`: a whole number without ``.0``, any other number as the
shortest text that reads back as the same float64), so ``1``, ``1.0``, `` 1`` and ``1e0`` are one
category. A column with any other text is *text*: its cells are compared as written (without
surrounding spaces), so ``250`` and ``250.0`` stay two codes. Each site decides from its own rows, so
the sites must agree on every column's kind: :func:`category_kinds` is what a site declares (in
simulation :func:`cohort.data.sites.load_sites` computes it per site; deployed, the site sends it with its
schema), and :func:`agree_kinds` stops a federation whose sites disagree, naming two of them. The
one-hot columns follow :func:`category_order`, in simulation and in both deployed exchanges.
"""

from __future__ import annotations

import math

from cohort.core.errors import DataError
from cohort.data.table import ALWAYS_MISSING, Table

MISSING = "<missing>"  # the category of a missing cell, with missing_category = true


def missing_codes(spec, name: str) -> set[str]:
    """The cells that mean "missing" in column ``name`` of ``spec`` (a :class:`cohort.data.features.Spec`)."""
    return {*ALWAYS_MISSING, *spec.missing_values, *spec.missing_by_column.get(name, ())}


def _present(cells, missing: set[str]) -> list[str | None]:
    """Stripped cells, None where missing: empty, a missing-value code, or a NaN."""
    return [None if c in missing or _is_nan(c) else c for c in (v.strip() for v in cells)]


def categories_of(cells: list[str], missing: set[str], missing_category: bool) -> list[str | None]:
    """A categorical column's cells as canonical categories (see the module's notes)."""
    values = _present(cells, missing)
    if all(is_number(v) for v in values if v is not None):  # numeric-valued: one text per number
        values = [None if v is None else canonical_number(v) for v in values]
    return [MISSING if v is None else v for v in values] if missing_category else values


def canonical_number(cell: str) -> str:
    """The one text of a category that is a number: a whole number as an integer (``1``, ``1.0``,
    ``1e0`` and ``+1`` give ``1``; ``-0`` gives ``0``), any other number as the shortest text that
    reads back as the same float64 (``0.5``, ``1e+16``, ``inf``)."""
    x = float(cell)
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def category_kinds(table: Table, spec, rows=None) -> dict[str, list[str]]:
    """What one site's categorical columns hold, at its rows ``rows`` (default: all): for each column
    with a value, ``["number", example]`` when every value is a number, else ``["text", example]`` with
    an example that is not a number. A site sends this in the clear, with its schema."""
    out = {}
    for name in spec.categorical:
        if name not in table.columns:
            continue  # the sites' columns are compared, and a missing one named, by whoever asks
        cells = table.column(name)
        mine = cells if rows is None else [cells[i] for i in rows]
        values = sorted({v for v in _present(mine, missing_codes(spec, name)) if v is not None})
        if values:
            words = [v for v in values if not is_number(v)]
            out[name] = ["text", words[0][:40]] if words else ["number", canonical_number(values[0])]
    return out


def agree_kinds(kinds: dict[str, dict]) -> None:
    """Sites' :func:`category_kinds` (site name -> kinds), checked: every categorical column holds
    numbers at every site that has values in it, or text at every one. Raises DataError naming the
    column and two sites that disagree."""
    first: dict[tuple[str, str], tuple[str, str]] = {}  # (column, kind) -> (site, example)
    for site, columns in kinds.items():
        for name, (kind, example) in columns.items():
            first.setdefault((name, kind), (site, example))
            other = "text" if kind == "number" else "number"
            if (name, other) in first:
                (num_site, num), (text_site, text) = (first[name, "number"], first[name, "text"])
                raise DataError(
                    f"categorical column {name!r} holds numbers at site {num_site!r} (e.g. {num!r}) but text at site "
                    f"{text_site!r} (e.g. {text!r}): the sites must agree, since numbers are matched by value "
                    f"('1' = '1.0') and text as written. If {text!r} marks a missing value, add it to "
                    f"data.missing_values (or data.missing_by_column); otherwise rewrite the column at one of the two "
                    f"sites so that both hold numbers, or both text")


def check_declared(categories: dict, kinds: dict) -> None:
    """A site's categories (column -> values or counts) against the kinds it declared: a column it said
    holds numbers has only canonical numbers (and :data:`MISSING`). ValueError says which column is not."""
    for name, values in categories.items():
        if kinds.get(name, ("text",))[0] == "number" and not all(
                v == MISSING or (is_number(v) and canonical_number(v) == v) for v in values):
            raise ValueError(f"its categories of {name!r} are not canonical numbers (such as '1', never '1.0'), though "
                             "it declared that the column holds numbers")


def category_order(values) -> list[str]:
    """The one-hot columns' order of a categorical column's ``values``: by number when every value is
    one (``2`` before ``10``), else as sorted text; :data:`MISSING` last. Every site and the server use it."""
    present = set(values) - {MISSING}
    if all(is_number(v) for v in present):
        ordered = sorted(present, key=lambda v: (float(v), v))
    else:
        ordered = sorted(present)
    return ordered + ([MISSING] if MISSING in values else [])


def is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _is_nan(v: str) -> bool:
    try:
        return math.isnan(float(v))
    except ValueError:
        return False
