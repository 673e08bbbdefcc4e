"""Atomic files and folders, and names from users checked to stay inside a folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import anndata as ad

from .plain import to_plain


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """A hidden temporary folder beside ``out``, renamed to ``out`` when the block ends.

    If the block fails (including Ctrl-C) the temporary folder is removed and ``out`` is
    left as it was; with ``overwrite`` an existing ``out`` is replaced as a whole.

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise exists_error(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # hidden name, so that list_runs and the dashboard never pick a half-written folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        move_into_place(tmp, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def exists_error(run_dir: Path) -> FileExistsError:
    what = "a run folder" if Path(run_dir).is_dir() else "a file"
    return FileExistsError(
        f"{run_dir}: {what} already exists there (pass --overwrite, or overwrite=True, to replace it)"
    )


def move_into_place(tmp: Path, run_dir: Path, *, overwrite: bool) -> None:
    if not run_dir.exists():
        os.rename(tmp, run_dir)
        return
    if not overwrite:
        raise exists_error(run_dir)
    old = run_dir.with_name(f".{run_dir.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(run_dir, old)
    try:
        os.rename(tmp, run_dir)
    except BaseException:
        os.rename(old, run_dir)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def check_output(out: Path, source: Path, *, overwrite: bool, what: str = "input") -> None:
    """Refuse an output that is not an .h5ad, would replace ``source`` (named ``what`` in the
    message), or exists (unless ``overwrite``)."""
    if out.suffix.lower() != ".h5ad":
        raise ValueError(f"{out}: the output must be an .h5ad file")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ValueError(f"{out}: the output would overwrite the {what}; choose another --out")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike) -> None:
    """``adata.write_h5ad(path)``, text columns in pandas' string dtype included.

    pandas 3 reads text into its string dtype by default, and anndata refuses to write those
    arrays unless told to (anndata older than 0.11 cannot read them back; we require 0.12).

    A mapping in ``uns`` whose keys hold "/" (labels such as "L2/3" keying counts or
    thresholds) is written as JSON text: HDF5 reads "/" in a key as a path, which would
    split ``{"L2/3": 5}`` into ``{"L2": {"3": 5}}`` (and anndata will refuse such keys).
    ``adata`` itself is left as it was.
    """
    if _slash_keys(adata.uns):
        if adata.is_view:  # a view's uns is not swapped in place
            adata = adata.copy()
        uns = adata.uns
        try:
            adata.uns = _slash_safe(dict(uns))
            _write(adata, path)
        finally:
            adata.uns = uns
    else:
        _write(adata, path)


def _write(adata: ad.AnnData, path: str | os.PathLike) -> None:
    with ad.settings.override(allow_write_nullable_strings=True):
        adata.write_h5ad(path)


def _slash_keys(value) -> bool:
    """Whether a mapping in ``value`` (nested) has a key holding "/"."""
    return isinstance(value, Mapping) and any("/" in str(k) or _slash_keys(v) for k, v in value.items())


def _slash_safe(value):
    """``value`` with every mapping keyed by a string holding "/" turned into JSON text."""
    if isinstance(value, Mapping):
        if any("/" in str(k) for k in value):
            return json.dumps(to_plain(dict(value)))
        return {k: _slash_safe(v) for k, v in value.items()}
    return value


def write_h5ad_atomic(adata: ad.AnnData, out: Path) -> Path:
    """Write ``adata`` to a hidden temporary file beside ``out``, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_h5ad(adata, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out



def safe_child(base: str | os.PathLike, name: str) -> Path:
    """``base / name`` for a ``name`` that came from a user, checked to stay inside ``base``.

    ``name`` must be one plain path component: not empty, no NUL byte, no ``/`` or ``\\``,
    not ``.`` or ``..``, not hidden (a leading dot marks temporary folders), and the
    result, symlinks resolved, must lie inside ``base``. Text such as ``%2e%2e`` is taken
    literally (it is decoded, if at all, before it gets here).

    Raises
    ------
    ValueError
        Naming the problem; the message quotes ``name`` with ``repr``.
    """
    base = Path(base)
    if not isinstance(name, str) or not name:
        raise ValueError("a name is needed (empty)")
    problem = None
    if "\x00" in name:
        problem = "holds a NUL byte"
    elif "/" in name or "\\" in name:
        problem = "holds a path separator"
    elif name in (".", ".."):
        problem = "names a parent or the folder itself"
    elif name.startswith("."):
        problem = "is hidden (starts with a dot)"
    if problem is None:
        child, root = base / name, base.resolve()
        resolved = child.resolve()
        if resolved != root and resolved.is_relative_to(root):
            return child
        problem = f"is a symbolic link leading outside {base}"
    raise ValueError(f"{name!r} cannot name an entry of {base}: it {problem}")

