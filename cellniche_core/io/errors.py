"""The error every bad input raises, and the phrases its messages share."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

SHOW = 5  # how many offending cell / slide names a message lists


class CohortError(ValueError):
    """An input cohort cannot be used; the message names the file and the problem."""


def cohort_error(source: object, problem: str) -> CohortError:
    """``CohortError("<source>: <problem>")``."""
    return CohortError(f"{source}: {problem}")


def cells_phrase(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def first_names(names: Sequence[object] | pd.Index) -> list[str]:
    return [str(n) for n in list(names[:SHOW])]


_SHAPE_MISMATCH = re.compile(
    r"Value passed for key '(?P<key>[^']*)' is of incorrect shape\. Values of (?P<attr>\w+) must "
    r"match dimensions .*? Value had shape \((?P<had>[^)]*)\) while it should have had "
    r"\((?P<want>[^)]*)\)",
    re.DOTALL,
)


def short_reason(exc: BaseException) -> str:
    """One readable line for an exception of h5py, zarr, anndata or torch."""
    text = str(exc).strip()
    # h5py / zarr messages are long and technical; translate the common ones
    if "signature not found" in text:
        return "not an HDF5 file"
    if "truncated file" in text:
        return "the file is truncated"
    if "No group found" in text:
        return "not a zarr store"
    shape = _SHAPE_MISMATCH.search(text)
    if shape:  # anndata's check that every obsm / layers entry has one row per cell
        had, want = shape["had"].split(",")[0], shape["want"].split(",")[0]
        return (f"{shape['attr']}[{shape['key']!r}] has {had} rows but the file has {want} cells; "
                "it must hold one row per cell")
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."

