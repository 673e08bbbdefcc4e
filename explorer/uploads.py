"""Uploaded files: held in memory, staged on disk only inside the uploads folder (no Streamlit).

An upload is held in memory as :class:`Upload` (the name the browser gave and the bytes).
It touches the disk only inside the uploads folder, in a folder of its own with a random
name, and only while it is read: :func:`preview_upload`, the Train page's cohort check and
the Label transfer page stage the bytes in a temporary folder (:func:`staging`) removed
right after, and a training job stages them in ``uploads/train-<job id>/``, removed when
the job ends, whatever the outcome. A staged file is named after the upload with every
character outside ``[A-Za-z0-9_-]`` replaced, so no name from the browser ever forms a
path. Messages name the upload, never the staging path (:func:`shown_message`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anndata as ad
import h5py
import pandas as pd

from cellniche_core.io import CohortError, read_cohort, refuse_outside_data, safe_child

#: longest stem of a staged file
MAX_STEM = 64
#: rows of ``obs`` shown in an upload's preview
PREVIEW_ROWS = 5
#: prefix of a training job's staging folder inside the uploads folder
JOB_FOLDER_PREFIX = "train-"
#: prefixes of the temporary folders: a preview, the Train page's check, a transfer query, a download
PREVIEW_PREFIX, CHECK_PREFIX, QUERY_PREFIX, DOWNLOAD_PREFIX = ".preview-", ".check-", ".query-", ".download-"
#: staging folders older than this are left over from a stopped server (seconds)
STALE_AFTER_S = 24 * 3600
STAGING_PREFIXES = (JOB_FOLDER_PREFIX, PREVIEW_PREFIX, CHECK_PREFIX, QUERY_PREFIX, DOWNLOAD_PREFIX)

T = TypeVar("T")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Upload:
    """An uploaded file: the name the browser gave (shown, never used as a path) and its bytes."""

    name: str
    data: bytes = field(repr=False)

    @property
    def shown(self) -> str:
        """The file name without any folder part."""
        return Path(str(self.name).replace("\\", "/")).name or "upload"


def safe_stem(name: str) -> str:
    """A file stem built from ``name`` holding only ``[A-Za-z0-9_-]`` (at most ``MAX_STEM`` characters)."""
    stem = _UNSAFE.sub("_", Path(str(name).replace("\\", "/")).stem).strip("_-")
    return stem[:MAX_STEM] or "upload"


def check_suffix(upload: Upload) -> None:
    """Raise :class:`CohortError` unless the upload is named ``*.h5ad``."""
    suffix = Path(upload.shown).suffix
    if not upload.shown.lower().endswith(".h5ad"):
        raise CohortError(
            f"{upload.shown}: unsupported file type {suffix or '(no extension)'!r}; expected an .h5ad file "
            "(convert a table or a .zarr store to AnnData .h5ad first, or train it with the command line)")


def stage_uploads(uploads: Sequence[Upload], folder: Path) -> list[Path]:
    """Write the uploads into ``folder`` under distinct safe names; their paths, in order.

    A cohort file without a slide column becomes one slide named after its stem, so the
    stems stay as close to the upload names as safety allows.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths, used = [], set()
    for upload in uploads:
        check_suffix(upload)
        stem, n = safe_stem(upload.shown), 1
        while stem.lower() in used:
            n += 1
            stem = f"{safe_stem(upload.shown)[:MAX_STEM - 4]}-{n}"
        used.add(stem.lower())
        path = safe_child(folder, f"{stem}.h5ad")
        path.write_bytes(upload.data)
        paths.append(path)
    return paths


def shown_message(exc: BaseException, paths: Sequence[Path], uploads: Sequence[Upload], folder: Path) -> str:
    """The message of ``exc`` naming each upload instead of its staged path."""
    text = str(exc) if isinstance(exc, CohortError) else f"{type(exc).__name__}: {exc}"
    for path, upload in zip(paths, uploads):
        text = text.replace(str(path), upload.shown)
    return text.replace(str(folder), "upload")



def staging(uploads_dir: Path, prefix: str) -> tempfile.TemporaryDirectory:
    """A fresh temporary folder inside ``uploads_dir`` (created if needed), removed when the block ends."""
    uploads_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=uploads_dir)


def read_staged(uploads: Sequence[Upload], uploads_dir: Path, prefix: str, read: Callable[[list[Path]], T]) -> T:
    """``read(paths)`` of the uploads staged in a fresh folder (``prefix``) that is removed
    right after; whatever fails becomes a :class:`CohortError` naming the uploads."""
    with staging(uploads_dir, prefix) as tmp:
        folder, paths = Path(tmp), []
        try:
            paths = stage_uploads(uploads, folder)
            return read(paths)
        except Exception as exc:  # whatever fails, the message names the upload
            raise CohortError(shown_message(exc, paths, uploads, folder)) from None


def remove_stale_staging(uploads_dir: Path, *, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove staging folders a stopped server left behind in ``uploads_dir``; those removed."""
    if not uploads_dir.is_dir():
        return []
    limit, removed = time.time() - older_than_s, []
    for path in uploads_dir.iterdir():
        try:
            stale = path.is_dir() and path.name.startswith(STAGING_PREFIXES) and path.stat().st_mtime < limit
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class FilePreview:
    """What the page shows of one upload before its keys are chosen."""

    name: str
    n_obs: int
    n_vars: int
    columns: tuple[str, ...]
    obsm_keys: tuple[str, ...]
    dtypes: pd.DataFrame  # one row per obs column: column, dtype, distinct values
    head: pd.DataFrame  # the first rows of obs


def preview_upload(upload: Upload, uploads_dir: Path, *, rows: int = PREVIEW_ROWS) -> FilePreview:
    """Read an upload's ``obs``, ``obsm`` keys and size (``X`` stays on disk).

    Raises :class:`CohortError` naming the upload. A file that cannot be opened is read
    again by :func:`~cellniche_core.io.read_cohort`, whose message says what is wrong.
    """
    check_suffix(upload)
    with staging(uploads_dir, PREVIEW_PREFIX) as tmp:
        folder = Path(tmp)
        paths = stage_uploads([upload], folder)
        preview = _lazy_preview(paths[0], upload.shown, rows)
        if preview is not None:
            return preview
        try:  # the core explains what is wrong with the file
            adata = read_cohort(paths, features="auto", min_cells_per_sample=1)
        except Exception as exc:  # whatever fails, the message names the upload
            raise CohortError(shown_message(exc, paths, [upload], folder)) from None
        return _describe(adata, upload.shown, rows)


def _lazy_preview(path: Path, name: str, rows: int) -> FilePreview | None:
    """The preview read with ``X`` left on disk, or None when anndata cannot open the file so.

    A file that refers to data outside itself is never opened by anndata here (it could
    make the server read any file); the core's read refuses it with a message.
    """
    try:
        with h5py.File(path, "r") as f:
            refuse_outside_data(f, path)
        with warnings.catch_warnings():  # duplicate names: the core's read says what it does about them
            warnings.filterwarnings("ignore", message=".*names are not unique.*")
            adata = ad.read_h5ad(path, backed="r")
    except Exception:  # read again by the core, whose message says what is wrong
        return None
    try:
        return _describe(adata, name, rows)
    finally:
        adata.file.close()


def _describe(adata: ad.AnnData, name: str, rows: int) -> FilePreview:
    obs = adata.obs
    dtypes = pd.DataFrame({"column": [str(c) for c in obs.columns],
                           "dtype": [str(t) for t in obs.dtypes],
                           "distinct values": [int(obs[c].nunique()) for c in obs.columns]})
    return FilePreview(name=name, n_obs=int(adata.n_obs), n_vars=int(adata.n_vars),
                       columns=tuple(str(c) for c in obs.columns),
                       obsm_keys=tuple(str(k) for k in adata.obsm),
                       dtypes=dtypes, head=obs.head(rows).copy())
