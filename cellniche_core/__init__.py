"""CellNiche: cell-microenvironment embeddings and niches for spatial omics cohorts.

Typical use::

    from cellniche_core import CellNiche, call_niches, read_cohort
    adata = read_cohort(["slide1.h5ad", "slide2.h5ad"])
    model = CellNiche().fit(adata)          # GPU when available
    model.embed(adata)                      # obsm["X_cellniche"]
    labels, info = call_niches(adata.obsm["X_cellniche"], "auto")

The command line (``python -m cellniche_core fit ...``) runs the whole pipeline and writes
a run folder; see :mod:`cellniche_core.pipeline`.
"""

from .cellniche import CellNiche, InputKeys
from .graph import GraphSettings, build_knn_graph, build_radius_graph
from .io import CohortError, list_runs, load_run, read_cohort, validate_cohort, write_run
from .keys import UNKNOWN, Keys
from .niches import call_niches, choose_n_niches
from .pipeline import RunOptions, analyse_cohort, fit_run
from .train import TrainConfig, resolve_device
from .transfer import annotate_query, transfer_labels

__all__ = [
    "UNKNOWN", "CellNiche", "CohortError", "GraphSettings", "InputKeys", "Keys", "RunOptions", "TrainConfig",
    "analyse_cohort", "build_knn_graph", "build_radius_graph", "call_niches", "choose_n_niches", "fit_run",
    "list_runs", "load_run", "read_cohort", "resolve_device", "validate_cohort", "write_run",
    "annotate_query", "transfer_labels",
]
