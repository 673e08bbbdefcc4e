"""Descriptive niche names: automatic ones from what a niche is enriched in, and the user's own.

A niche keeps its id (``"N3"``, the value in ``obs["niche"]``); what people read is its
*label*, the id and a name: ``"N3 · B cell + Dendritic cell"``. The automatic name lists
the cell types most enriched in the niche (or, in a run without cell types, its top
markers). Names a user gives are kept in ``niche_names.json`` beside the run's
``cohort.h5ad``, which is never modified; the file is replaced atomically.

Functions
---------
:func:`auto_names` (counts table -> names) and :func:`auto_names_from_markers` are pure;
:func:`niche_labels` combines them with the names a run was given; :func:`with_labels` returns an AnnData
whose niche column carries the labels (for tables, figures, exports and label transfer).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .keys import RUN_NAMES

#: the user's names, beside cohort.h5ad in a run folder
NAMES_FILE = RUN_NAMES
SEPARATOR = " · "
#: longest name accepted
MAX_NAME = 60
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MARKUP = re.compile(r"[<>{}`]")


# ----------------------------------------------------------------------------- automatic names


def auto_names(counts: pd.DataFrame, *, n_top: int = 2, min_log2: float = 1.0,
               min_share: float = 0.05) -> dict[str, str]:
    """Name each niche after its most enriched cell types.

    Parameters
    ----------
    counts
        (niches x cell types) cell counts.
    n_top
        At most this many cell types per name.
    min_log2
        A cell type counts as enriched when its share in the niche is at least
        ``2 ** min_log2`` times its share in the whole cohort...
    min_share
        ...and it makes up at least this share of the niche's cells.

    Returns
    -------
    ``{niche: name}``, e.g. ``"B cell + Dendritic cell"``, most enriched first; a niche
    with no enriched cell type is ``"mixed"`` followed by its most common type.
    """
    counts = counts.astype(float)
    share = counts.div(counts.sum(1).replace(0, np.nan), axis=0).fillna(0.0)
    cohort = counts.sum(0) / max(counts.to_numpy().sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log2 = np.log2(share / cohort.replace(0, np.nan))
    out = {}
    for niche in counts.index:
        fold, frac = log2.loc[niche], share.loc[niche]
        keep = fold[(fold >= min_log2) & (frac >= min_share)].sort_values(ascending=False, kind="stable")
        if len(keep):
            out[str(niche)] = " + ".join(str(t) for t in keep.index[:n_top])
        elif frac.sum() > 0:
            out[str(niche)] = f"mixed, mostly {frac.idxmax()}"
        else:
            out[str(niche)] = "empty"
    return out


def auto_names_from_markers(scores: pd.DataFrame, *, n_top: int = 2, min_z: float = 0.5) -> dict[str, str]:
    """Name each niche after its top markers, e.g. ``"CD20+ CD21+"``.

    ``scores``: (niches x features) mean z-scored expression; a marker counts when its
    score is at least ``min_z``. A niche without one is ``"no marker"``.
    """
    out = {}
    for niche, row in scores.iterrows():
        top = row[row >= min_z].sort_values(ascending=False, kind="stable")
        out[str(niche)] = " ".join(f"{m}+" for m in top.index[:n_top]) if len(top) else "no marker"
    return out


def auto_names_for(adata, *, niche_key: str, cell_type_key: str | None, X=None) -> dict[str, str]:
    """Automatic names of the niches of ``adata``: cell types when the column exists, else
    markers of ``X`` (default ``adata.X``; e.g. a run's matrix left on disk)."""
    niche = adata.obs[niche_key].astype(str)
    if cell_type_key and cell_type_key in adata.obs:
        counts = pd.crosstab(niche, adata.obs[cell_type_key].astype(str))
        return auto_names(counts)
    if adata.n_vars and (X is not None or adata.X is not None):
        from .niches import marker_scores

        return auto_names_from_markers(marker_scores(adata, niche_key=niche_key, X=X))
    return {n: "" for n in pd.unique(niche)}


def run_auto_names(run, niche_key: str) -> dict[str, str]:
    """:func:`auto_names_for` of a loaded run; its expression matrix is read (from disk, for a
    run loaded without it) only when there is no cell-type column to name the niches by."""
    if run.keys.cell_type in run.adata.obs:
        return auto_names_for(run.adata, niche_key=niche_key, cell_type_key=run.keys.cell_type)
    with run.expression() as X:
        return auto_names_for(run.adata, niche_key=niche_key, cell_type_key=None, X=X)


# ----------------------------------------------------------------------------- labels


def label(niche: str, name: str | None) -> str:
    """``"N3 · name"``; the bare id without a name."""
    name = (name or "").strip()
    return f"{niche}{SEPARATOR}{name}" if name else str(niche)


def niche_id(text: str) -> str:
    """The id of a label (``"N3 · B cell"`` -> ``"N3"``); an id is returned as it is."""
    return str(text).split(SEPARATOR, 1)[0]


def niche_labels(niches, auto: dict[str, str], custom: dict[str, str] | None = None) -> dict[str, str]:
    """``{id: label}``: the user's name where there is one, else the automatic one."""
    custom = custom or {}
    return {str(n): label(str(n), custom.get(str(n)) or auto.get(str(n))) for n in niches}


def with_labels(adata, labels: dict[str, str], *, niche_key: str):
    """A new AnnData whose ``obs[niche_key]`` holds ``labels`` instead of the ids.

    ``obs`` is copied; ``X``, ``obsm``, ``var`` and ``uns`` are shared with ``adata``,
    which is left unchanged. The category order is kept.
    """
    import anndata as ad

    obs = adata.obs.copy()
    column = obs[niche_key]
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(str).astype("category")
    obs[niche_key] = column.cat.rename_categories(lambda c: labels.get(str(c), str(c)))
    out = ad.AnnData(X=adata.X, obs=obs, var=adata.var, uns=adata.uns,
                     obsm={k: adata.obsm[k] for k in adata.obsm},
                     layers={k: adata.layers[k] for k in adata.layers})
    return out


# ----------------------------------------------------------------------------- the run's file


class NamesError(ValueError):
    """A names file or table that cannot be used; the message says which entry and why."""


def check_name(niche: str, name) -> str:
    """A cleaned name; raises :class:`NamesError` for a name that is not plain short text."""
    if not isinstance(name, str):
        raise NamesError(f"niche {niche}: the name must be text, not {type(name).__name__}")
    name = " ".join(name.split())
    if len(name) > MAX_NAME:
        raise NamesError(f"niche {niche}: the name is {len(name)} characters long; at most {MAX_NAME}")
    if _CONTROL.search(name):
        raise NamesError(f"niche {niche}: the name holds control characters")
    if _MARKUP.search(name):  # names go into HTML tooltips and templates
        raise NamesError(f"niche {niche}: the name may not contain < > {{ }} or `")
    return name


def check_names(names: dict, niches) -> dict[str, str]:
    """``names`` cleaned; raises :class:`NamesError` naming an unknown niche and the known ones."""
    known = [str(n) for n in niches]
    unknown = [str(n) for n in names if str(n) not in known]
    if unknown:
        raise NamesError(f"unknown niche(s) {', '.join(map(repr, unknown))}; this run's niches are "
                         f"{', '.join(known)}")
    cleaned = {str(n): check_name(str(n), v) for n, v in names.items()}
    return {n: v for n, v in cleaned.items() if v}


def read_names(run_dir: str | os.PathLike) -> dict[str, str]:
    """The user's names of a run (``{}`` without a names file); :class:`NamesError` if it is unreadable."""
    path = Path(run_dir) / NAMES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NamesError(f"{path}: cannot be read as JSON ({exc})") from exc
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, dict):
        raise NamesError(f"{path}: expected {{\"names\": {{niche: name}}}}")
    return {str(k): check_name(str(k), v) for k, v in names.items() if v}


def write_names(run_dir: str | os.PathLike, names: dict, *, niches) -> Path:
    """Store the user's names of a run's niches (atomic replace of ``niche_names.json``).

    ``names`` maps niche ids to names; an empty name goes back to the automatic one.
    Raises :class:`NamesError` for an unknown niche or a bad name; nothing is written then.
    """
    run_dir = Path(run_dir)
    cleaned = check_names(names, niches)
    path = run_dir / NAMES_FILE
    tmp = run_dir / f".{NAMES_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"names": cleaned}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_names_csv(path: str | os.PathLike, niches) -> dict[str, str]:
    """``{niche: name}`` from a two-column CSV file with a ``niche,name`` header (see :func:`parse_names_csv`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NamesError(f"{path}: cannot be read ({exc})") from exc
    return parse_names_csv(text, niches, source=str(path))


def parse_names_csv(text: str, niches, *, source: str = "names.csv") -> dict[str, str]:
    """``{niche: name}`` from the text of a CSV with a ``niche,name`` header.

    A third column ``automatic_name`` (as the dashboard's download writes, beside the
    names to fill in) is read past. An empty name comes back as "" (the automatic name).
    A niche may be given by its id or its label (``N3 · old name``). Raises
    :class:`NamesError`, starting with ``source``, naming the line for a missing header, a
    row of another number of fields, a repeated or unknown niche, or a bad name.
    """
    rows = [row for row in csv.reader(text.lstrip("\ufeff").splitlines()) if any(cell.strip() for cell in row)]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header not in (["niche", "name"], ["niche", "name", "automatic_name"]):
        raise NamesError(f"{source}: the first line must be the header 'niche,name' (or 'niche,name,automatic_name')")
    fields = ",".join(header)
    names: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise NamesError(f"{source}, line {line}: expected {len(header)} fields ({fields}), found {len(row)}")
        niche = niche_id(row[0].strip())
        if niche in names:
            raise NamesError(f"{source}, line {line}: niche {niche} is named twice")
        names[niche] = row[1]
    try:
        cleaned = check_names(names, niches)
    except NamesError as exc:
        raise NamesError(f"{source}: {exc}") from None
    # an empty name stays, as "": laid over the names given before, it takes the niche back
    # to its automatic name (dropped here, it left the old name in place)
    return {n: cleaned.get(n, "") for n in names}


def given_names(run_dir, manifest: dict | None = None) -> dict[str, str]:
    """The names given to a run's niches: its manifest's ``niche_names`` under its names file's."""
    recorded = {str(k): str(v) for k, v in ((manifest or {}).get("niche_names") or {}).items() if v}
    return {**recorded, **read_names(run_dir)}


def named_run(run, *, niche_key: str | None = None):
    """``run`` (a loaded :class:`cellniche_core.io.Run`) whose niche column holds labels.

    The labels are the run's user names over the automatic ones; ``run`` is unchanged.
    ``niche_key`` defaults to the run's own.
    """
    from dataclasses import replace

    niche_key = niche_key or run.keys.niche
    if niche_key not in run.adata.obs:
        return run
    # the names file is read again: a run cached by the dashboard sees a rename
    names = given_names(run.path, run.manifest)
    labels = niche_labels([str(c) for c in pd.unique(run.adata.obs[niche_key].astype(str))],
                          run_auto_names(run, niche_key), names)
    return replace(run, adata=with_labels(run.adata, labels, niche_key=niche_key), niche_names=names)
