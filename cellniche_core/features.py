"""Encoder inputs from an AnnData: one-hot cell types, expression, or both.

A :class:`FeatureSpec` is fitted on the training cohort and stored with the model, so a
query slide is turned into the same columns in the same order: cell types or genes the
query lacks are reported and left at zero (the training mean for expression), extra ones
are dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

FEATURE_MODES = ("pheno", "expr", "pheno_expr")
#: expression with more columns than this is reduced by PCA
MAX_EXPRESSION_DIMS = 50
_PCA_FIT_CELLS = 100_000
#: bytes of the dense float64 (cells x genes) the PCA is fitted on, at most: a sample of
#: 100,000 cells of a panel of 10,000 genes would be 8 GB. A wider sample has its scaling
#: measured a block of rows at a time and its PCA fitted on its most variable genes, as many
#: as fit (:func:`most_variable`; 1,342 at 100,000 cells).
FIT_BYTES = 2**30
_CLIP = 10.0


def resolve_feature_mode(features: str, obs_columns, cell_type_key: str) -> str:
    """``"auto"`` → ``"pheno"`` when the cell-type column exists, else ``"expr"``."""
    if features == "auto":
        return "pheno" if cell_type_key in obs_columns else "expr"
    if features not in FEATURE_MODES:
        raise ValueError(f"features must be 'auto' or one of {FEATURE_MODES}, got {features!r}")
    return features


@dataclass
class FeatureSpec:
    """How cells become encoder inputs (fitted once, applied to any slide)."""

    mode: str
    cell_types: list[str] = field(default_factory=list)
    genes: list[str] = field(default_factory=list)
    transform: str = "none"  # "log1p_norm" (counts), "log1p" (intensities) or "none"
    target_sum: float = 1.0
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    components: list[list[float]] = field(default_factory=list)  # (n_pcs, n_genes), or of pca_genes
    # a panel too wide for the PCA's memory: the genes (indices into ``genes``) it was fitted on
    pca_genes: list[int] | None = None
    # counts: each gene's mean share of a cell's total, so that a query lacking genes is
    # normalised by the total its cells would have over the whole panel
    count_share: list[float] = field(default_factory=list)

    @property
    def uses_types(self) -> bool:
        return self.mode in ("pheno", "pheno_expr")

    @property
    def uses_expression(self) -> bool:
        return self.mode in ("expr", "pheno_expr")

    @property
    def in_channels(self) -> int:
        n = len(self.cell_types) if self.uses_types else 0
        if self.uses_expression:
            n += len(self.components) if self.components else len(self.genes)
        return n

    @property
    def input_genes(self) -> list[str]:
        """The genes the inputs depend on: the panel, or the PCA's genes of a wide one."""
        return [self.genes[i] for i in self.pca_genes] if self.pca_genes else self.genes

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["pca_genes"] is None:  # as before the field existed, so that older releases read it
            del d["pca_genes"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        return cls(**d)


def on_disk(X) -> bool:
    """Whether ``X`` is a matrix left on disk (an h5py or zarr array, an anndata sparse
    dataset): read a block of rows at a time, never indexed by a list of rows."""
    return not (isinstance(X, np.ndarray) or sp.issparse(X))


def row_blocks(X, *, block_bytes: int | None = None):
    """``(lo, rows lo..hi of X)`` for consecutive blocks of about ``block_bytes`` (float64, full width)."""
    step = max(1, (block_bytes or CHUNK_BYTES) // (8 * max(1, X.shape[1])))
    for lo in range(0, X.shape[0], step):
        yield lo, X[lo:lo + step]


def _dense_rows(X, rows=None) -> np.ndarray:
    """``X`` (or its ``rows``, sorted) as a dense float64 array; an on-disk ``X`` is read in blocks."""
    if rows is not None and on_disk(X):
        rows = np.asarray(rows)
        out, at = np.empty((len(rows), X.shape[1])), 0  # filled block by block: held once
        for part in _sample_blocks(X, rows):
            out[at:at + len(part)] = part
            at += len(part)
        return out
    X = X if rows is None else X[rows]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return X.astype(np.float64, copy=False)


def row_totals(X) -> np.ndarray:
    """Each row's sum, (n,); an on-disk ``X`` is read a block of rows at a time."""
    if not on_disk(X):
        return np.asarray(X.sum(1), dtype=np.float64).ravel()
    return np.concatenate([row_totals(block) for _, block in row_blocks(X)] or [np.empty(0)])


#: what each transform of :func:`value_kind` says of the values, for messages
VALUE_KINDS = {"log1p_norm": "counts (whole numbers)", "log1p": "intensities (heavy-tailed, not whole numbers)",
               "none": "values already transformed (small, or some negative)"}


def value_kind(X) -> str:
    """The transform values like ``X``'s get (see :data:`VALUE_KINDS`), from a sample of rows:
    counts get library-size normalisation + log1p; heavy-tailed intensities get log1p."""
    rng = np.random.default_rng(0)
    size = min(X.shape[0], 5000, max(500, CHUNK_BYTES // (8 * max(1, X.shape[1]))))  # ~256 MB at most
    rows = rng.choice(X.shape[0], size=size, replace=False)
    sample = _dense_rows(X, np.sort(rows))
    if sample.size == 0 or sample.min() < 0:
        return "none"
    if np.allclose(sample, np.round(sample)) and sample.max() > 1:
        return "log1p_norm"
    return "log1p" if np.percentile(sample, 99) > 20 else "none"


def _transform(X, spec: FeatureSpec, *, coverage: float = 1.0, in_place: bool = False) -> np.ndarray:
    """``coverage``: the share of a cell's counts its columns of ``X`` hold (1: the whole panel).
    ``in_place``: ``X`` is the caller's own float64 array, not needed after, and is overwritten."""
    X = _dense_rows(X)
    if spec.transform == "log1p_norm":
        if X.size and X.min() < 0:  # log1p of a negative share: NaN inputs, every embedding NaN
            from .io.errors import CohortError

            raise CohortError(
                "X has negative values, but the model's expression inputs are counts (whole numbers >= 0, "
                "divided by each cell's total, then log1p): give raw counts, as the model was trained on, "
                "not scaled or background-subtracted values")
        total = X.sum(1, keepdims=True) / coverage
        total = np.where(total > 0, total, 1.0)
        if in_place:
            X /= total
        else:
            X = X / total  # a new array; then in place, not three more of its size
        X *= spec.target_sum
        np.log1p(X, out=X)
    elif spec.transform == "log1p":
        X = np.clip(X, 0, None, out=X if in_place else None)
        np.log1p(X, out=X)
    return X


def _sample_blocks(X, rows: np.ndarray):
    """Dense float64 blocks (ours to overwrite) of the sorted ``rows`` of ``X``, ~CHUNK_BYTES each."""
    step = max(1, CHUNK_BYTES // (8 * max(1, X.shape[1])))
    if on_disk(X):
        for lo, block in row_blocks(X):
            pick = rows[(rows >= lo) & (rows < lo + block.shape[0])] - lo
            for j in range(0, len(pick), step):
                yield _dense_rows(block[pick[j:j + step]])
    else:
        for j in range(0, len(rows), step):
            yield _dense_rows(X[rows[j:j + step]])


def most_variable(var: np.ndarray, n_top: int) -> np.ndarray:
    """Indices (sorted) of the ``n_top`` genes of highest variance of their transformed values
    (log-normalised counts: the genes that vary from cell to cell, not those at a low level in
    a few cells)."""
    return np.sort(np.argsort(-var, kind="stable")[:n_top])


def _fit_wide(X, rows: np.ndarray, spec: FeatureSpec, seed: int) -> None:
    """Scaling and PCA of a sample too wide for :data:`FIT_BYTES` (see :func:`fit_features`):
    the mean and spread of every gene summed a block of rows at a time, then the PCA fitted
    on the most variable genes that fit."""
    from sklearn.decomposition import PCA

    n_genes = X.shape[1]
    total, total_sq, share, counted = np.zeros(n_genes), np.zeros(n_genes), np.zeros(n_genes), 0
    for block in _sample_blocks(X, rows):
        if spec.transform == "log1p_norm":
            part, n = _share_sum(block)
            share += part
            counted += n
        block = _transform(block, spec, in_place=True)
        total += block.sum(0)
        total_sq += np.square(block).sum(0)
    if spec.transform == "log1p_norm":
        spec.count_share = (share / max(counted, 1)).tolist()
    mean = total / len(rows)
    var = np.maximum(total_sq / len(rows) - mean ** 2, 0.0)
    sd = np.sqrt(var)
    sd = _unit_if_constant(sd, mean)
    spec.mean, spec.scale = mean.tolist(), sd.tolist()
    chosen = most_variable(var, max(MAX_EXPRESSION_DIMS, FIT_BYTES // (8 * len(rows))))
    Xs = np.empty((len(rows), len(chosen)))
    at = 0
    for block in _sample_blocks(X, rows):
        z = (_transform(block, spec, in_place=True)[:, chosen] - mean[chosen]) / sd[chosen]
        Xs[at:at + len(z)] = np.clip(z, -_CLIP, _CLIP)
        at += len(z)
    pca = PCA(n_components=min(MAX_EXPRESSION_DIMS, len(rows)), random_state=seed, copy=False).fit(Xs)
    spec.components, spec.pca_genes = pca.components_.tolist(), chosen.tolist()


def _unit_if_constant(sd: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``sd`` with 1 for a constant column: one whose spread is rounding error (a constant 2.7
    has a float spread of ~2e-14, or ~4e-8 summed by blocks, which would read any other value
    as z = +-10)."""
    sd = sd.copy()
    sd[sd <= 1e-6 * np.maximum(np.abs(mean), 1.0)] = 1.0
    return sd


def _column_sd(X: np.ndarray, block: int = 256) -> np.ndarray:
    """``X.std(0)`` a block of columns at a time (the same numbers, without a copy of ``X``)."""
    return np.concatenate([X[:, j:j + block].std(0) for j in range(0, X.shape[1], block)] or [np.empty(0)])


def _count_share(X: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Each column's mean share of a cell's total over the rows of ``X`` with counts, (n_genes,)."""
    share, n = np.zeros(X.shape[1]), 0
    for lo in range(0, len(X), chunk):  # a block's shares at a time, not a copy of X
        part, counted = _share_sum(X[lo:lo + chunk])
        share += part
        n += counted
    return share / max(n, 1)


def _share_sum(block: np.ndarray) -> tuple[np.ndarray, int]:
    """Each column's share of a cell's total summed over the rows of ``block`` with counts, and their number."""
    total = block.sum(1)
    counted = total > 0
    return (block[counted] / total[counted, None]).sum(0), int(counted.sum())


def fit_features(adata, *, mode: str, cell_type_key: str, seed: int = 0) -> FeatureSpec:
    """Fit the input transformation on a training cohort.

    Parameters
    ----------
    adata
        Cohort; reads ``obs[cell_type_key]`` (pheno modes) and ``X`` (expr modes).
    mode
        ``"pheno"`` (one-hot cell type), ``"expr"`` (expression) or ``"pheno_expr"``.
    """
    if mode not in FEATURE_MODES:
        raise ValueError(f"features must be one of {FEATURE_MODES}, got {mode!r}")
    spec = FeatureSpec(mode=mode)
    if spec.uses_types:
        spec.cell_types = sorted(map(str, pd.Series(adata.obs[cell_type_key]).dropna().unique()))
    if spec.uses_expression:
        spec.genes = list(map(str, adata.var_names))
        spec.transform = value_kind(adata.X)
        if spec.transform == "log1p_norm":
            totals = row_totals(adata.X)
            spec.target_sum = float(np.median(totals[totals > 0])) if (totals > 0).any() else 1.0
        rng = np.random.default_rng(seed)
        n = adata.n_obs
        rows = np.sort(rng.choice(n, size=min(n, _PCA_FIT_CELLS), replace=False))
        if len(rows) * adata.n_vars * 8 > FIT_BYTES and adata.n_vars > MAX_EXPRESSION_DIMS:
            _fit_wide(adata.X, rows, spec, seed)
            return spec
        raw = _dense_rows(adata.X, rows)  # read once, for the shares and the scaling; a copy, ours
        if spec.transform == "log1p_norm":
            spec.count_share = _count_share(raw).tolist()
        Xs = _transform(raw, spec, in_place=True)
        del raw
        mean, sd = Xs.mean(0), _column_sd(Xs)
        sd = _unit_if_constant(sd, mean)
        spec.mean, spec.scale = mean.tolist(), sd.tolist()
        if Xs.shape[1] > MAX_EXPRESSION_DIMS:
            from sklearn.decomposition import PCA

            Xs -= mean  # Xs is ours and not needed after: z-scored in place
            Xs /= sd
            np.clip(Xs, -_CLIP, _CLIP, out=Xs)
            pca = PCA(n_components=MAX_EXPRESSION_DIMS, random_state=seed, copy=False).fit(Xs)
            spec.components = pca.components_.tolist()
    return spec


#: rows of the expression matrix transformed at a time (at most)
FEATURE_CHUNK = 65_536
#: bytes of one block of expression rows read at once (float64, full width)
CHUNK_BYTES = 256 * 2**20


def make_features(adata, spec: FeatureSpec, *, cell_type_key: str, X=None,
                  chunk_size: int = FEATURE_CHUNK) -> tuple[np.ndarray, dict]:
    """Encoder inputs for every cell of ``adata``, aligned to ``spec``.

    The expression matrix (``X``, default ``adata.X``) is read ``chunk_size`` rows at a
    time, so it may be a backed HDF5 or zarr matrix larger than memory: only the
    (n, in_channels) result is held whole.

    Returns
    -------
    x
        (n, spec.in_channels) float32.
    report
        What alignment did: ``missing_genes``, ``extra_genes``, ``unknown_cell_types``
        (with their cell counts), ``missing_cell_types``.
    """
    parts, report = [], {}
    n = adata.n_obs
    if spec.uses_types:
        labels = pd.Series(adata.obs[cell_type_key]).astype("object")
        lookup = {t: i for i, t in enumerate(spec.cell_types)}
        codes = labels.map(lambda v: lookup.get(str(v), -1) if pd.notna(v) else -1).to_numpy()
        onehot = np.zeros((n, len(spec.cell_types)), dtype=np.float32)
        known = codes >= 0
        onehot[np.flatnonzero(known), codes[known]] = 1.0
        unknown = labels[~known].astype(str).value_counts()
        report["unknown_cell_types"] = {str(k): int(v) for k, v in unknown.items()}
        present = set(labels.dropna().astype(str))
        report["missing_cell_types"] = [t for t in spec.cell_types if t not in present]
        parts.append(onehot)
    if spec.uses_expression:
        var = pd.Index(map(str, adata.var_names))
        pos = var.get_indexer(spec.genes)
        report["missing_genes"] = [g for g, p in zip(spec.genes, pos) if p < 0]
        known = set(spec.genes)
        report["extra_genes"] = [g for g in var if g not in known]
        mean, scale = np.asarray(spec.mean), np.asarray(spec.scale)
        have = pos >= 0
        components = np.asarray(spec.components) if spec.components else None
        source = adata.X if X is None else X
        Z = np.empty((n, len(components) if components is not None else len(spec.genes)), dtype=np.float32)
        # a block of rows is read at full width: keep it near CHUNK_BYTES whatever the gene count
        rows = max(1, min(chunk_size, CHUNK_BYTES // (8 * max(1, len(var)))))
        # counts of a query lacking genes: each cell's total over the whole panel is its total
        # over the genes it has, divided by the share those genes hold in the reference's cells
        # (without it every gene of a half panel would read about twice as high)
        coverage = (float(np.sum(np.asarray(spec.count_share)[have])) if spec.count_share and not have.all()
                    else 1.0)
        if coverage != 1.0:
            report["panel_count_share"] = coverage
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            block = np.empty((hi - lo, len(spec.genes)))
            block[:, ~have] = mean[~have]  # a missing gene sits at the training mean: z = 0
            if have.any():
                block[:, have] = _transform(source[lo:hi][:, pos[have]], spec, in_place=True,  # a copy, ours
                                            coverage=max(coverage, 1e-6))
            z = np.clip((block - mean) / scale, -_CLIP, _CLIP)
            if spec.pca_genes:  # a wide panel's PCA reads its most variable genes
                z = z[:, spec.pca_genes]
            Z[lo:hi] = z @ components.T if components is not None else z
        parts.append(Z)
    return np.concatenate(parts, axis=1), report


def neighbourhood_profiles(x: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                           hops: tuple[int, ...] = (1,), *, normalise: bool = True,
                           weights: np.ndarray | None = None) -> np.ndarray:
    """Each cell's surroundings at one or several scales, (n, f * len(hops)) float32.

    The profile at ``h`` hops is the mean of the feature rows of the cell and its
    neighbours, applied ``h`` times (a random-walk smoothing over roughly the ``h``-hop
    neighbourhood). With one scale the profile is returned as it is; with several, each
    scale's profiles are L2-normalised (unless ``normalise`` is False) before they are put
    side by side, so the cosine similarity of two cells' profiles is the mean of their
    similarities at each scale. ``weights`` (n,), e.g. :func:`~cellniche_core.graph.cell_areas`,
    weigh each cell in every mean (a mean over tissue area rather than over cells).

    The similarity strategies compare these profiles rather than single cells, so that
    "similar" means a similar surrounding, not merely the same cell type; several scales
    let one setting serve tissues whose structures are a few cells wide (cortical layers)
    or span hundreds (tumour compartments).
    """
    hops = tuple(sorted(set(int(h) for h in hops)))
    if not hops or hops[0] < 1:
        raise ValueError(f"hops must be positive integers, got {hops}")
    n = len(indptr) - 1
    adj = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(n, n))
    adj = adj + sp.identity(n, dtype=np.float32, format="csr")
    if weights is not None:
        adj = adj @ sp.diags(np.asarray(weights, dtype=np.float32))
    step = (sp.diags(1.0 / np.asarray(adj.sum(1)).ravel()) @ adj).astype(np.float32).tocsr()
    profile = np.asarray(x, dtype=np.float32)
    f = profile.shape[1]
    # each scale written into its block of the result as it is reached: only the result and
    # the current scale are held (a list of the scales, their normalised copies and the
    # concatenation held four times the result: 4.8 GB for 50 inputs at 6 scales of 1M cells)
    out = np.empty((n, f * len(hops)), dtype=np.float32)
    normalise_each = normalise and len(hops) > 1  # ``normalise=False``: each scale at its own magnitude
    for h in range(1, hops[-1] + 1):
        profile = np.asarray(step @ profile, dtype=np.float32)
        if h in hops:
            j = hops.index(h)
            block = out[:, j * f:(j + 1) * f]
            block[:] = profile
            if normalise_each:
                block /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    return out


def describe_inputs(spec: FeatureSpec) -> str:
    """What the encoder reads, in words: ``"cell type (12 types)"``, ``"expression of 10,000
    genes (counts: log of counts per cell, z-scored; 50 principal components of the 2,716
    most variable)"``; both joined by " + " for ``pheno_expr``."""
    parts = []
    if spec.uses_types:
        parts.append(f"cell type ({len(spec.cell_types):,} types)")
    if spec.uses_expression:
        how = {"log1p_norm": "counts: log of counts per cell", "log1p": "intensities: log"}.get(spec.transform,
                                                                                                 "values as given")
        pcs = ""
        if spec.components:
            of = (f"the {len(spec.pca_genes):,} most variable" if spec.pca_genes else "all")
            pcs = f"; {len(spec.components)} principal components of {of}"
        parts.append(f"expression of {len(spec.genes):,} genes ({how}, z-scored{pcs})")
    return " + ".join(parts)


def describe_alignment(alignment: dict, *, show: int = 10) -> list[str]:
    """One readable line per thing the feature alignment had to do (:func:`make_features`, and
    the query's kind of values, see :func:`~cellniche_core.transfer.annotate_query`)."""
    def names(items) -> str:
        items = list(items)
        return ", ".join(map(str, items[:show])) + (f" (+{len(items) - show} more)" if len(items) > show else "")

    lines = [f"the query as read: {note}" for note in alignment.get("input_notes", [])]
    if len(alignment.get("missing_genes", [])):
        lines.append(f"{len(alignment['missing_genes'])} reference gene(s) missing in the query, set to the "
                     f"reference mean: {names(alignment['missing_genes'])}")
    if "values" in alignment:
        kinds = alignment["values"]
        lines.append(f"the query's values look like {VALUE_KINDS.get(kinds['query'], kinds['query'])}, the "
                     f"reference's like {VALUE_KINDS.get(kinds['reference'], kinds['reference'])}: both are "
                     "transformed as the reference's were, so give the query the same kind of values")
    if "panel_count_share" in alignment:
        lines.append(f"each cell's counts normalised by its total over the whole panel, estimated from the genes it "
                     f"has (they hold {alignment['panel_count_share']:.0%} of a reference cell's counts)")
    if len(alignment.get("extra_genes", [])):
        lines.append(f"{len(alignment['extra_genes'])} query gene(s) not in the reference, dropped: "
                     f"{names(alignment['extra_genes'])}")
    unknown = alignment.get("unknown_cell_types") or {}
    if unknown:
        lines.append(f"{len(unknown)} cell type(s) not in the reference, encoded as no type: "
                     + names(f"{t} ({n} cells)" for t, n in unknown.items()))
    if len(alignment.get("missing_cell_types", [])):
        lines.append(f"{len(alignment['missing_cell_types'])} reference cell type(s) absent from the query: "
                     f"{names(alignment['missing_cell_types'])}")
    return lines
