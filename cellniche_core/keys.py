"""Names of every AnnData key the package reads or writes, in one place."""

from __future__ import annotations


class Keys:
    """Default AnnData keys (input keys are configurable per call)."""

    # inputs
    SPATIAL = "spatial"  # obsm, (n, 2) coordinates
    SAMPLE = "sample"  # obs, slide id: one spatial graph per slide
    PATIENT = "patient"  # obs, patient id: several slides may share one
    CELL_TYPE = "cell_type"  # obs, phenotype label

    # outputs
    EMBEDDING = "X_cellniche"  # obsm, (n, d) float32, L2-normalised
    NICHE = "niche"  # obs, categorical niche label
    UMAP = "X_umap"  # obsm, (n, 2)
    TRANSFERRED = "transferred_label"  # obs, label transferred from a reference
    CONFIDENCE = "transfer_confidence"  # obs, float in [0, 1]
    TRANSFER_DISTANCE = "transfer_distance"  # obs, mean cosine distance to the reference neighbours
    UNS = "cellniche"  # uns, run manifest

    # demo ground truth
    TRUE_NICHE = "true_niche"


UNKNOWN = "unknown"

# files inside a run folder
RUN_ADATA = "cohort.h5ad"
RUN_WEIGHTS = "model.pt"
RUN_MODEL_CONFIG = "model.json"
RUN_MANIFEST = "manifest.json"
