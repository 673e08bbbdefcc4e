"""A catalogue of malformed cohort files, shared by every test of bad input.

Each :class:`Case` writes one broken file (or store) into a folder and says which
fragment the resulting :class:`~cellniche_core.io.CohortError` message must contain.
The core, the command line and the dashboard's upload paths all run through the same
list, so a new case is covered everywhere at once::

    from malformed import CASES  # tests/ is on sys.path, as for apptest_support

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
    def test_bad_input(case, tmp_path):
        path = case.write(tmp_path)
        with pytest.raises(CohortError, match=...):
            read_cohort(path, features=case.features)

Files are tiny (24 cells) and built in milliseconds. Every message fragment is lower
case and distinct from the others: compare it with ``str(error).lower()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["CASES", "N_CELLS", "Case", "make_adata", "valid_file"]

#: cells in every generated file; above the default ``min_cells_per_sample=20``
N_CELLS = 24
#: file name used by the cases, unless the case is about the name itself
FILE_NAME = "tumour.h5ad"


@dataclass(frozen=True)
class Case:
    """One malformed input.

    Attributes
    ----------
    name
        Short id, used as the pytest id.
    build
        ``build(path)`` writes the malformed file or store at ``path``.
    message
        Lower-case fragment the error message must contain.
    filename
        Name of the file written inside the target folder.
    features
        ``features`` argument under which the input is invalid ("pheno" unless the
        case is about the expression matrix).
    """

    name: str
    build: Callable[[Path], None]
    message: str
    filename: str = FILE_NAME
    features: str = "pheno"

    def write(self, directory: str | Path) -> Path:
        """Write the malformed input into ``directory`` (created if needed); its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.filename
        self.build(path)
        return path


# ----------------------------------------------------------------------------- builders


def make_adata(n: int = N_CELLS) -> ad.AnnData:
    """A small valid cohort: ``n`` cells on a jittered grid, two cell types, three genes."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical((["T", "B"] * n)[:n])},
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(rng.random((n, 3)).astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=["g0", "g1", "g2"]))
    grid = np.column_stack([np.arange(n) % 6, np.arange(n) // 6]).astype(float)
    adata.obsm["spatial"] = grid * 10.0 + rng.random((n, 2))
    return adata


def valid_file(path: Path, adata: ad.AnnData | None = None) -> Path:
    """Write ``adata`` (default: :func:`make_adata`) as ``.h5ad`` or ``.zarr`` by suffix."""
    adata = make_adata() if adata is None else adata
    if path.suffix == ".zarr":
        with warnings.catch_warnings():  # anndata's notice about the zarr format default
            warnings.simplefilter("ignore", UserWarning)
            adata.write_zarr(path)
    else:
        adata.write_h5ad(path)
    return path


def _edited(*changes: Callable[[ad.AnnData], None]) -> Callable[[Path], None]:
    """A builder: a valid AnnData, each ``change(adata)`` applied in place, written."""

    def build(path: Path) -> None:
        adata = make_adata()
        for change in changes:
            change(adata)
        valid_file(path, adata)

    return build


def _bytes(data: bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(data)

    return build


def _h5(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    """A builder: a valid .h5ad edited with h5py, past AnnData's own checks."""

    def build(path: Path) -> None:
        valid_file(path)
        with h5py.File(path, "r+") as f:
            edit(f)

    return build


def _replace_spatial(value: np.ndarray) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f["obsm/spatial"]
        f["obsm/spatial"] = value
        f["obsm/spatial"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

    return edit


def _latin1_column_name(f: h5py.File) -> None:
    # a column name written by a tool that does not encode text as UTF-8
    f["obs"].move("cell_type", "cell_type_")
    f["obs"].attrs["column-order"] = np.array([b"cell_type_\xe9"])


def _external_link(path: Path) -> None:
    # obsm['spatial'] borrowed from another file: reading it would read that file
    other = path.parent / "elsewhere.h5"
    with h5py.File(other, "w") as f:
        f["coords"] = np.zeros((N_CELLS, 2))
    valid_file(path)
    with h5py.File(path, "r+") as f:
        del f["obsm/spatial"]
        f["obsm/spatial"] = h5py.ExternalLink(str(other), "/coords")


def _external_storage(path: Path) -> None:
    # an obs column whose bytes live in another (raw) file, e.g. a file of the server
    raw = path.parent / "elsewhere.bin"
    raw.write_bytes(bytes(range(N_CELLS)))
    valid_file(path)
    with h5py.File(path, "r+") as f:
        f["obs"].create_dataset("leak", shape=(N_CELLS,), dtype="u1", external=[(str(raw), 0, N_CELLS)])


def _truncated(path: Path) -> None:
    valid_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _plain_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["intensities"] = np.arange(12.0).reshape(4, 3)


def _csv_table(path: Path) -> None:
    rows = [f"c{i},{i % 6 * 10.0},{i // 6 * 10.0},T" for i in range(N_CELLS)]
    path.write_text("cell,x,y,cell_type\n" + "\n".join(rows) + "\n")


def _random_bytes(path: Path) -> None:
    data = np.random.default_rng(1).bytes(4096)
    path.write_bytes(b"\x00\x01" + data)  # a NUL byte: surely not text


def _junk_zarr(path: Path) -> None:
    path.mkdir()
    (path / "notes").write_text("not a zarr store")


def _zarr_not_anndata(path: Path) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_group("images")


def _drop_spatial(adata: ad.AnnData) -> None:
    del adata.obsm["spatial"]
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 2))


def _spatial(value: Callable[[ad.AnnData], object]) -> Callable[[ad.AnnData], None]:
    def change(adata: ad.AnnData) -> None:
        adata.obsm["spatial"] = value(adata)

    return change


def _set_spatial(rows: list[int], value: float) -> Callable[[ad.AnnData], None]:
    def change(adata: ad.AnnData) -> None:
        adata.obsm["spatial"][rows, 0] = value

    return change


def _set_x(row: int, value: float) -> Callable[[ad.AnnData], None]:
    def change(adata: ad.AnnData) -> None:
        adata.X[row, 1] = value

    return change


def _obs(column: str, values: Callable[[int], object]) -> Callable[[ad.AnnData], None]:
    def change(adata: ad.AnnData) -> None:
        adata.obs[column] = values(adata.n_obs)

    return change


def _drop_cell_type(adata: ad.AnnData) -> None:
    del adata.obs["cell_type"]


def _text_x(adata: ad.AnnData) -> None:
    adata.X = np.full(adata.shape, "high", dtype=object)


def _duplicate_genes(adata: ad.AnnData) -> None:
    adata.var_names = ["g0", "g1", "g0"]


def _small_slide(path: Path) -> None:
    adata = make_adata(N_CELLS + 5)
    adata.obs["sample"] = ["big"] * N_CELLS + ["tiny"] * 5
    valid_file(path, adata)


def _subset(n: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        valid_file(path, make_adata()[:n].copy())

    return build


# ----------------------------------------------------------------------------- the cases

CASES: list[Case] = [
    # the file itself
    Case("empty-file", _bytes(b""), "is empty (0 bytes)"),
    Case("random-bytes", _random_bytes, "not an hdf5 file"),
    Case("truncated-h5ad", _truncated, "the file is truncated"),
    Case("hdf5-not-anndata", _plain_hdf5, "an hdf5 file but not an anndata"),
    Case("csv-renamed-h5ad", _csv_table, "is a text file"),
    Case("csv-extension", _csv_table, "unsupported file type '.csv'", filename="tumour.csv"),
    Case("txt-extension", _bytes(b"x\ty\n1\t2\n"), "unsupported file type '.txt'",
         filename="tumour.txt"),
    Case("directory-named-h5ad", lambda p: p.mkdir(), "it is a directory"),
    Case("non-utf8-column-name", _h5(_latin1_column_name), "not valid utf-8"),
    Case("external-link", _external_link, "links to another file"),
    Case("external-storage", _external_storage, "stores its data in another file"),
    Case("zarr-empty", lambda p: p.mkdir(), "a .zarr store with no files", filename="tumour.zarr"),
    Case("zarr-junk", _junk_zarr, "not a zarr store", filename="tumour.zarr"),
    Case("zarr-not-anndata", _zarr_not_anndata, "a zarr group but not an anndata",
         filename="tumour.zarr"),
    # coordinates
    Case("spatial-missing", _edited(_drop_spatial), "obsm['spatial'] is missing"),
    Case("spatial-one-column", _edited(_spatial(lambda a: np.zeros((a.n_obs, 1)))),
         "has 1 column"),
    Case("spatial-nan", _edited(_set_spatial([2, 5], np.nan)), "has nan coordinates in 2 cells"),
    Case("spatial-inf", _edited(_set_spatial([3], np.inf)), "has infinite coordinates in 1 cell"),
    Case("spatial-wrong-length", _h5(_replace_spatial(np.zeros((N_CELLS - 1, 2)))),
         f"obsm['spatial'] has {N_CELLS - 1} rows"),
    Case("spatial-text", _edited(_spatial(lambda a: np.full((a.n_obs, 2), "a"))),
         "obsm['spatial'] is not numeric"),
    Case("spatial-sparse", _edited(_spatial(lambda a: sp.csr_matrix(a.obsm["spatial"]))),
         "is a sparse matrix"),
    Case("spatial-all-same-point", _edited(_spatial(lambda a: np.full((a.n_obs, 2), 5.0))),
         "all share one position"),
    # cells and slides
    Case("zero-cells", _subset(0), "has zero cells"),
    Case("single-cell", _subset(1), "has a single cell"),
    Case("slide-too-small", _small_slide, "fewer than min_cells_per_sample"),
    Case("sample-nan", _edited(_obs("sample", lambda n: [None] + ["s1"] * (n - 1))),
         "has no slide id (nan) for 1 of"),
    # cell types
    Case("cell-type-missing", _edited(_drop_cell_type), "obs['cell_type'] is missing"),
    Case("cell-type-all-nan", _edited(_obs("cell_type", lambda n: pd.Categorical([None] * n))),
         "no cell has a cell type"),
    # expression
    Case("x-nan", _edited(_set_x(3, np.nan)), "x has nan values in 1 cell", features="expr"),
    Case("x-inf", _edited(_set_x(4, -np.inf)), "x has infinite values in 1 cell", features="expr"),
    Case("x-text", _edited(_text_x), "x is not numeric", features="expr"),
    Case("x-duplicate-gene-names", _edited(_duplicate_genes), "1 gene/protein name(s) occur more than once",
         features="expr"),
]

assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


@dataclass(frozen=True)
class BadArgument:
    """A valid file (:func:`make_adata`: obs ``cell_type``, obsm ``spatial``) with a bad ``fit`` option.

    ``message``: lower-case fragment of the one-line error; ``names_columns``: the message
    must also list the columns (or obsm keys) the file does have.
    """

    name: str
    args: tuple[str, ...]
    message: str
    names_columns: bool = True


BAD_ARGUMENTS = [
    BadArgument("cell-type-key-typo", ("--cell-type-key", "celltype_typo"), "obs['celltype_typo'] is missing"),
    BadArgument("sample-key-typo", ("--sample-key", "slide_typo"), "obs['slide_typo'] is missing"),
    BadArgument("patient-key-typo", ("--patient-key", "patient_typo"), "obs['patient_typo'] is missing"),
    BadArgument("group-key-typo", ("--group-key", "respnse"), "obs['respnse'] is missing"),
    BadArgument("spatial-key-typo", ("--spatial-key", "xy_typo"), "obsm['xy_typo'] is missing"),
    BadArgument("n-niches-above-the-maximum", ("--n-niches", "100000"), "at most 50 niches", names_columns=False),
    BadArgument("n-niches-above-the-cells", ("--n-niches", str(N_CELLS + 1)),
                f"more niches than the cohort's {N_CELLS} cells", names_columns=False),
]
