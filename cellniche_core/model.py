"""GraphSAGE encoder, projection head and the multi-positive contrastive loss.

Tensor-only: nothing here knows about AnnData, files or devices (modules follow their
parameters, functions follow their inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import SAGEConv


class NicheEncoder(nn.Module):
    r"""GraphSAGE encoder of a cell's multi-hop neighbourhood.

    Each layer is ``h_i' = W_1 h_i + W_2 mean_{j in N(i)} h_j`` (``SAGEConv``), followed by
    LayerNorm, ReLU and dropout on every layer but the last. Given cell weights ``w`` (the
    area each cell stands for), the mean is weighted: ``sum_j w_j h_j / sum_j w_j``.
    LayerNorm (not BatchNorm) keeps a cell's embedding independent of which other cells
    share its batch, so chunked inference equals whole-graph inference.

    Shapes
    ------
    input: ``x`` (n, in_channels), ``edge_index`` (2, e)
    output: (n, out_channels)
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(SAGEConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(b) for b in dims[1:-1])
        self.dropout = dropout

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def layer(self, i: int, x, edge_index, size=None, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Apply layer ``i`` alone; ``x`` may be a (source, target) pair for bipartite use.

        ``weight``: (n_source,) cell weights of the weighted neighbour mean (None: plain mean).
        """
        if weight is None:
            h = self.convs[i](x, edge_index, size=size)
        else:
            source, target = x if isinstance(x, tuple) else (x, x)
            n_target = size[1] if size is not None else target.shape[0]
            mean = weighted_neighbour_mean(source, edge_index, weight, n_target)
            h = self.convs[i].lin_l(mean) + self.convs[i].lin_r(target)
        if i < self.num_layers - 1:
            h = F.relu(self.norms[i](h))
            h = F.dropout(h, p=self.dropout, training=self.training)
        return h

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor,
                nodes_per_hop: tuple[int, ...] | None = None,
                edges_per_hop: tuple[int, ...] | None = None,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """Encode all nodes, or, given a hop-ordered subgraph, only the targets.

        With ``nodes_per_hop`` / ``edges_per_hop`` (see ``sampling.Neighbourhood``), layer
        ``i`` of ``L`` only computes the cells within ``L - 1 - i`` hops of the targets,
        from the edges into them: the outermost hop is read but never updated. The
        result, ``(nodes_per_hop[0], out_channels)``, equals the targets' rows of the
        untrimmed forward pass. ``weight``: (n,) cell weights, one per row of ``x``.
        """
        if nodes_per_hop is None or edges_per_hop is None:
            for i in range(self.num_layers):
                x = self.layer(i, x, edge_index, weight=weight)
            return x
        for i in range(self.num_layers):
            hop = self.num_layers - 1 - i
            n_dst, n_edges = nodes_per_hop[hop], edges_per_hop[hop]
            w = None if weight is None else weight[:x.shape[0]]  # the rows x still has
            x = self.layer(i, (x, x[:n_dst]), edge_index[:, :n_edges], size=(x.shape[0], n_dst), weight=w)
        return x


def weighted_neighbour_mean(source: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor,
                            n_target: int) -> torch.Tensor:
    """``sum_j w_j source_j / sum_j w_j`` over each target's edges ``(j -> target)``, float32.

    One sparse product: the (edges, channels) messages a scatter would hold are never made.
    A target without edges gets zeros, as in ``SAGEConv``.
    """
    src, dst = edge_index[0], edge_index[1]
    w = weight[src].float()
    total = torch.zeros(n_target, dtype=torch.float32, device=w.device).index_add_(0, dst, w)
    values = w / total.clamp_min(torch.finfo(torch.float32).tiny)[dst]
    matrix = torch.sparse_coo_tensor(torch.stack([dst, src]), values, (n_target, source.shape[0]),
                                     check_invariants=False)  # indices made here, in range
    with torch.autocast(source.device.type, enabled=False):  # sparse products run in float32
        return torch.sparse.mm(matrix, source.float())


class ProjectionHead(nn.Module):
    """Two-layer MLP applied before the loss only; embeddings are taken before it."""

    def __init__(self, channels: int, hidden_channels: int | None = None):
        super().__init__()
        hidden_channels = hidden_channels or channels
        self.net = nn.Sequential(nn.Linear(channels, hidden_channels), nn.ReLU(),
                                 nn.Linear(hidden_channels, channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class LearnableTemperature(nn.Module):
    """Temperature ``tau`` learnt in log space and kept within ``[min_tau, max_tau]``."""

    def __init__(self, init: float = 0.1, min_tau: float = 0.01, max_tau: float = 1.0):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(init)))
        self.bounds = (math.log(min_tau), math.log(max_tau))

    def forward(self) -> torch.Tensor:
        return self.log_tau.clamp(*self.bounds).exp()


def multi_positive_info_nce(
    z: torch.Tensor,
    positives: torch.Tensor,
    tau: torch.Tensor | float,
    *,
    hard_weight: float = 0.0,
) -> torch.Tensor:
    r"""Multi-positive InfoNCE over one batch.

    For anchor ``i`` with positive set ``P(i)`` (non-empty) and ``s_ij = cos(z_i, z_j)``:

    .. math::
        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
                 \log \frac{e^{s_{ip}/\tau}}{\sum_{k \ne i} w_{ik} e^{s_{ik}/\tau}}

    With ``hard_weight = beta > 0`` negatives are re-weighted by
    ``w_ik = exp(beta s_ik) / mean_{k' in N(i)} exp(beta s_ik')`` (weights detached, mean 1
    over the anchor's negatives), so negatives that look like positives count more;
    positives keep weight 1. ``beta = 0`` is plain InfoNCE. Anchors without positives are
    skipped; the loss is the mean over the others.

    Shapes
    ------
    z: (m, d); positives: (m, m) bool with a False diagonal; returns a scalar.
    """
    z = F.normalize(z, dim=1)
    sim = z @ z.T
    logits = sim / tau
    m = z.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    positives = positives & ~eye
    log_w = torch.zeros_like(logits)
    if hard_weight > 0:
        neg = ~positives & ~eye
        s = (hard_weight * sim).detach().masked_fill(~neg, float("-inf"))
        n_neg = neg.sum(1, keepdim=True).clamp_min(1)
        log_mean = torch.logsumexp(s, dim=1, keepdim=True) - n_neg.log()
        log_w = torch.where(neg, s - log_mean, log_w)
    denom = torch.logsumexp((logits + log_w).masked_fill(eye, float("-inf")), dim=1)
    log_prob = logits - denom[:, None]
    n_pos = positives.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        # zero, but still a function of every input, so that every parameter gets a
        # (zero) gradient: DDP fails on the next step when one (the temperature) has none
        return (z.sum() + (tau.sum() if torch.is_tensor(tau) else 0.0)) * 0.0
    per_anchor = (log_prob * positives).sum(1)[has] / n_pos[has]
    return -per_anchor.mean()
