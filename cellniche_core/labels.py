"""Label columns as integer codes and as text, and the one natural order of names ("P2" before "P10")."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["NO_LABEL", "is_label_column", "label_codes", "label_text", "natural_key", "natural_sorted"]

#: label text that means "not annotated" (as NaN does): such cells carry no label
NO_LABEL = ("", "NA", "N/A", "nan", "NaN", "None", "<NA>")


def natural_key(name: object) -> list:
    """Sort key that puts ``"P2"`` before ``"P10"`` (digits compared as numbers, letters
    without regard to case)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(name))]


def natural_sorted(names) -> list[str]:
    """``names`` as strings, in natural order."""
    return sorted(map(str, names), key=natural_key)


def label_codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 = missing) and names of a label column, in its own order.

    A categorical keeps its category order (unused categories dropped); other columns
    are sorted naturally ("P2" before "P10").
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.cat.remove_unused_categories()
        names = [str(c) for c in column.cat.categories]
        if len(set(names)) == len(names):
            return column.cat.codes.to_numpy().astype(np.int64), names
    text = column.astype(object).map(str, na_action="ignore")
    names = sorted(pd.unique(text.dropna()), key=natural_key)
    return pd.Categorical(text, categories=names).codes.astype(np.int64), names


def label_text(column: pd.Series) -> pd.Series:
    """The labels of an obs column as text; NaN where a cell has none, which includes text
    that stands for "no label" in exported annotations (:data:`NO_LABEL`)."""
    values = pd.Series(column).astype("object")
    values = values.where(values.notna()).map(str, na_action="ignore")
    return values.where(~values.isin(NO_LABEL))


def is_label_column(column: pd.Series) -> bool:
    """Whether a column holds categories (categorical, text or bool), not numbers."""
    return (isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(column)
            or pd.api.types.is_string_dtype(column) or pd.api.types.is_bool_dtype(column))
