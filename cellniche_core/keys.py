"""Names of every AnnData key and run file the package reads or writes, in one place.

``Keys`` holds the default names; :class:`InputKeys`, :class:`CohortKeys` and
:class:`RunKeys` say where one model, one cohort or one run keeps its columns.
:attr:`cellniche_core.io.Run.keys` is the one place a run's manifest is read into keys.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    GRAPH = "spatial_connectivities"  # obsp, (n, n) CSR: the spatial graph the run was trained on
    TRANSFERRED = "transferred_label"  # obs, label transferred from a reference
    CONFIDENCE = "transfer_confidence"  # obs, float in [0, 1]
    TRANSFER_DISTANCE = "transfer_distance"  # obs, mean cosine distance to the reference neighbours
    NICHE_SIMILARITY = "niche_similarity"  # obs, cosine similarity to the nearest niche centre (embed)
    UNS = "cellniche"  # uns, run manifest
    INPUT_UNS = "cellniche_input"  # uns, what read_cohort read: files, keys, derived columns, notes
    TRANSFER_UNS = "cellniche_transfer"  # uns, label transfer parameters and summary
    EMBED_UNS = "cellniche_embed"  # uns, what embedding a cohort with a run did

    # the simulated demo cohort
    TRUE_NICHE = "true_niche"  # obs, the planted niche
    RESPONSE = "response"  # obs, "responder" / "non-responder" per patient
    SIMULATION_UNS = "simulation"  # uns, how the cohort was simulated


UNKNOWN = "unknown"

#: ``uns`` key where :func:`~cellniche_core.io.read_cohort` records the files, keys and derived columns
INPUT_UNS_KEY = Keys.INPUT_UNS
#: ``uns`` key of a label transfer's parameters and summary
TRANSFER_UNS_KEY = Keys.TRANSFER_UNS
#: ``uns`` key of what embedding a cohort with a run did
EMBED_UNS_KEY = Keys.EMBED_UNS

# files inside a run folder
RUN_ADATA = "cohort.h5ad"
RUN_WEIGHTS = "model.pt"
RUN_MODEL_CONFIG = "model.json"
RUN_MANIFEST = "manifest.json"
#: in a run folder: the names given to its niches (see :mod:`cellniche_core.names`)
RUN_NAMES = "niche_names.json"

# files of the demo (``python -m cellniche_core demo --out DIR``), in DIR
DEMO_COHORT = "demo_cohort.h5ad"
#: a query slide: one more patient, simulated like the cohort's but left out of the demo run
DEMO_QUERY = "demo_query.h5ad"


@dataclass
class InputKeys:
    """Where a model's inputs live in the AnnData."""

    spatial_key: str = Keys.SPATIAL
    sample_key: str = Keys.SAMPLE
    cell_type_key: str = Keys.CELL_TYPE


@dataclass(frozen=True)
class CohortKeys:
    """The columns a cohort is read with (as :func:`~cellniche_core.io.read_cohort` takes them).

    A default name that is not a column means "derive it": one slide per file, patient =
    slide. Every field is only ever compared with the file's columns, never used as a path.
    """

    spatial: str = Keys.SPATIAL  # obsm
    sample: str = Keys.SAMPLE
    patient: str = Keys.PATIENT
    cell_type: str = Keys.CELL_TYPE
    groups: tuple[str, ...] = ()

    def read_kwargs(self) -> dict:
        """Keyword arguments of :func:`~cellniche_core.io.read_cohort`."""
        return {"spatial_key": self.spatial, "sample_key": self.sample, "patient_key": self.patient,
                "cell_type_key": self.cell_type, "group_keys": tuple(self.groups)}

    def input_keys(self) -> InputKeys:
        """The model's part of the keys."""
        return InputKeys(spatial_key=self.spatial, sample_key=self.sample, cell_type_key=self.cell_type)


@dataclass(frozen=True)
class RunKeys(CohortKeys):
    """Where a run keeps its columns (``obs`` unless noted): its cohort's keys plus its outputs."""

    niche: str = Keys.NICHE
    umap: str = Keys.UMAP  # obsm
    embedding: str = Keys.EMBEDDING  # obsm

    def table_kwargs(self) -> dict[str, str]:
        """``niche_key``, ``sample_key`` and ``patient_key``, as the comparison tables take them."""
        return {"niche_key": self.niche, "sample_key": self.sample, "patient_key": self.patient}
