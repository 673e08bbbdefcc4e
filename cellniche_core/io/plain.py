"""Plain JSON for run manifests, and its h5ad-writable form."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch


def to_plain(obj: Any) -> Any:
    """Return ``obj`` as plain JSON types (dict, list, str, int, float, bool, None).

    Tuples and sets become lists, numpy scalars and arrays become Python numbers
    and lists, paths and devices become strings, dataclasses become dicts.

    Raises
    ------
    TypeError
        For a value with no JSON form.
    """
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, (os.PathLike, torch.device, torch.dtype)):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"a {type(obj).__name__} cannot be stored in a run manifest: {obj!r}")


def to_uns(plain: Any) -> Any:
    """Make plain JSON data writable by h5ad (lists of dicts or mixed lists become JSON text)."""
    if isinstance(plain, dict):
        return {str(k): to_uns(v) for k, v in plain.items()}
    if isinstance(plain, list) and not _is_array_like(plain):
        return json.dumps(plain)
    return plain


def _is_array_like(values: list) -> bool:
    # h5ad stores a list as an array: it must be rectangular and of one scalar kind
    kinds = {_scalar_kind(v) for v in _leaves(values)}
    if None in kinds or len(kinds) > 1:
        return False
    try:
        return np.asarray(values).dtype != object
    except ValueError:  # ragged
        return False


def _scalar_kind(value: Any) -> type | None:
    if isinstance(value, (bool, str)):
        return type(value)
    if isinstance(value, (int, float)):
        return float
    return None


def _leaves(values: Any):
    if isinstance(values, list):
        for v in values:
            yield from _leaves(v)
    else:
        yield values



def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: is not valid JSON ({exc})") from exc

