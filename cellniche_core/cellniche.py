"""The AnnData-aware model: ``CellNiche(...).fit(adata)``, ``.embed(adata)``, save / load.

It holds what must persist together — the fitted feature transformation, the graph
settings, the hyperparameters and the weights — so a trained model embeds slides it never
saw exactly as it embedded its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .embed import embed_nodes
from .features import FeatureSpec, fit_features, make_features, resolve_feature_mode
from .graph import GraphSettings, SpatialGraph, build_graph, cell_areas
from .keys import InputKeys, Keys
from .train import History, NicheModel, Progress, TrainConfig, autocast_dtype, resolve_device, train_model


def cell_positions(adata, keys: InputKeys) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, 2) coordinates of ``adata``'s cells and their slides (None without a sample column)."""
    coords = np.asarray(adata.obsm[keys.spatial_key])[:, :2]
    samples = adata.obs[keys.sample_key].astype(str).to_numpy() if keys.sample_key in adata.obs else None
    return coords, samples


def spatial_graph(adata, settings: GraphSettings, keys: InputKeys) -> SpatialGraph:
    """Per-slide spatial graph of ``adata`` (slides from ``obs[keys.sample_key]`` if present)."""
    return build_graph(*cell_positions(adata, keys), settings)


def store_graph(adata, graph: SpatialGraph) -> None:
    """Keep ``graph`` with the cohort, as the (n, n) CSR ``obsp["spatial_connectivities"]``."""
    n = graph.n_nodes
    adata.obsp[Keys.GRAPH] = sp.csr_matrix(
        (np.ones(graph.n_edges, dtype=np.float32), graph.indices, graph.indptr), shape=(n, n))


def stored_graph(adata) -> SpatialGraph | None:
    """The graph :func:`store_graph` kept with ``adata``, or None when there is none."""
    if Keys.GRAPH not in adata.obsp:
        return None
    csr = sp.csr_matrix(adata.obsp[Keys.GRAPH])
    return SpatialGraph(csr.indptr.astype(np.int64), csr.indices.astype(np.int64), {"stored": Keys.GRAPH})


def _csr_tensors(graph: SpatialGraph, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(graph.indptr).to(device), torch.from_numpy(graph.indices).to(device))


@dataclass
class CellNiche:
    """Niche embedding model for spatial omics cohorts.

    Parameters
    ----------
    features
        ``"pheno"``, ``"expr"``, ``"pheno_expr"`` or ``"auto"`` (pheno when the cell-type
        column exists, else expr).
    graph
        How spatial graphs are built (k-NN by default, scale derived from the data).
    config
        Encoder, sampler and optimiser settings.
    keys
        AnnData keys of the inputs.
    """

    features: str = "auto"
    graph: GraphSettings = field(default_factory=GraphSettings)
    config: TrainConfig = field(default_factory=TrainConfig)
    keys: InputKeys = field(default_factory=InputKeys)
    spec: FeatureSpec | None = None
    model: NicheModel | None = None
    history: History | None = None
    #: the encoder inputs of the cohort of the last ``fit(keep_inputs=True)``, with their
    #: alignment report, for an ``embed`` of the same cohort (see :meth:`fit`)
    inputs: tuple[np.ndarray, dict] | None = field(default=None, repr=False)

    def _mode(self, adata) -> str:
        return resolve_feature_mode(self.features, adata.obs.columns, self.keys.cell_type_key)

    def fit(self, adata, *, device: str = "auto", progress: Progress | None = None,
            should_stop=None, rank: int = 0, world_size: int = 1,
            graph: SpatialGraph | None = None, keep_inputs: bool = False) -> CellNiche:
        """Train on every slide of ``adata`` (one graph per slide). Returns ``self``.

        ``graph``: the spatial graph of ``adata`` when the caller already built it with
        :func:`spatial_graph` and this model's settings (built here otherwise).
        ``keep_inputs``: keep the encoder inputs made for training in :attr:`inputs`, so
        that ``embed(adata, inputs=model.inputs)`` does not make them again (reading and
        transforming the whole expression matrix: ~8 s for a million cells x 500 genes).
        """
        dev = resolve_device(device)
        self.spec = fit_features(adata, mode=self._mode(adata), cell_type_key=self.keys.cell_type_key,
                                 seed=self.config.seed)
        from .io.errors import CohortError  # (io imports this module)

        if self.spec.mode == "pheno" and len(self.spec.cell_types) < 2:
            raise CohortError(f"obs[{self.keys.cell_type_key!r}] holds one cell type "
                              f"({self.spec.cell_types[:1]}): every cell's input is the same, so no niche can be "
                              "told from another; give finer cell types, or use features='expr' (--features expr)")
        x_np, report = make_features(adata, self.spec, cell_type_key=self.keys.cell_type_key)
        self.inputs = (x_np, report) if keep_inputs else None
        graph = graph if graph is not None else spatial_graph(adata, self.graph, self.keys)
        if graph.n_edges == 0:
            raise CohortError(f"the spatial graph has no edge (graph settings {self.graph.to_dict()}): no two cells "
                              "are within the radius, given in the unit of the coordinates; use a larger --radius, "
                              "--radius auto (from each slide's cell spacing) or the default k-NN graph")
        indptr, indices = _csr_tensors(graph, dev)
        self.model, self.history = train_model(
            torch.from_numpy(x_np).to(dev), indptr, indices, self.config, weights=self._weights(adata, graph, dev),
            progress=progress, should_stop=should_stop, rank=rank, world_size=world_size)
        self.model.cpu()
        return self

    def _weights(self, adata, graph: SpatialGraph, device: torch.device) -> torch.Tensor | None:
        """Each cell's area weight when the model's means are weighted (``TrainConfig.area_weights``):
        the ``graph``'s when its build measured them, else measured here."""
        if not self.config.area_weights:
            return None
        areas = graph.cell_area if graph.cell_area is not None else cell_areas(*cell_positions(adata, self.keys))
        return torch.from_numpy(areas).to(device)

    def embed(self, adata, *, device: str = "auto", key_added: str = Keys.EMBEDDING,
              chunk_size: int = 32_768, graph: SpatialGraph | None = None, X=None,
              inputs: tuple[np.ndarray, dict] | None = None) -> dict:
        """Embed every cell of ``adata`` (trained or new slides).

        Writes ``adata.obsm[key_added]`` ((n, d) float32, L2-normalised). Returns the
        feature alignment report (missing / extra genes, unknown cell types). ``graph`` as
        in :meth:`fit`. ``X`` replaces ``adata.X`` as the expression matrix, e.g. a backed
        matrix read in chunks (see :mod:`cellniche_core.lazy`). ``inputs``: this model's
        encoder inputs of ``adata`` with their report, as :attr:`inputs` keeps them after a fit.
        """
        if self.model is None or self.spec is None:
            raise RuntimeError("the model is not trained: call fit() or load a run first")
        dev = resolve_device(device)
        if inputs is not None and len(inputs[0]) != adata.n_obs:
            raise ValueError(f"inputs has {len(inputs[0])} rows, adata {adata.n_obs} cells")
        x_np, report = (inputs if inputs is not None
                        else make_features(adata, self.spec, cell_type_key=self.keys.cell_type_key, X=X))
        graph = graph if graph is not None else spatial_graph(adata, self.graph, self.keys)
        indptr, indices = _csr_tensors(graph, dev)
        encoder = self.model.encoder.to(dev)
        adata.obsm[key_added] = embed_nodes(encoder, torch.from_numpy(x_np).to(dev), indptr, indices,
                                            dtype=autocast_dtype(self.config.precision, dev),
                                            chunk_size=chunk_size, weight=self._weights(adata, graph, dev))
        self.model.cpu()
        report["graph"] = {"n_edges": int(graph.n_edges),
                           "mean_degree": float(graph.n_edges / max(graph.n_nodes, 1))}
        return report

    # persistence ---------------------------------------------------------------------
    def model_config(self) -> dict:
        """Everything needed to rebuild the model besides its weights (JSON-serialisable)."""
        if self.spec is None:
            raise RuntimeError("the model is not trained")
        return {"features": self.spec.to_dict(), "graph": self.graph.to_dict(),
                "train": self.config.to_dict(), "keys": vars(self.keys).copy()}

    def state_dict(self) -> dict:
        if self.model is None:
            raise RuntimeError("the model is not trained")
        return self.model.state_dict()

    @classmethod
    def from_state(cls, model_config: dict, state_dict: dict) -> CellNiche:
        """Rebuild a trained model from :meth:`model_config` and :meth:`state_dict`."""
        spec = FeatureSpec.from_dict(model_config["features"])
        config = TrainConfig.from_dict(model_config["train"])
        obj = cls(features=spec.mode, graph=GraphSettings(**model_config["graph"]), config=config,
                  keys=InputKeys(**model_config.get("keys", {})), spec=spec)
        obj.model = NicheModel(spec.in_channels, config)
        obj.model.load_state_dict(state_dict)
        obj.model.eval()
        return obj

