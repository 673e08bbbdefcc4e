"""Deterministic full-neighbourhood inference for every cell, in chunks.

Layer by layer: layer ``l`` is computed for all cells (chunk by chunk of target cells,
each chunk seeing all of its neighbours) before layer ``l + 1`` starts, so each layer
costs one pass over the edges and memory stays at two (n, hidden) arrays plus one chunk.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .model import NicheEncoder
from .sampling import sample_neighbours


@torch.no_grad()
def embed_nodes(
    encoder: NicheEncoder,
    x: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    *,
    chunk_size: int = 32_768,
    dtype: torch.dtype | None = None,
    weight: torch.Tensor | None = None,
) -> np.ndarray:
    """L2-normalised embedding of every node, (n, out_channels) float32 numpy array.

    ``x``, ``indptr``, ``indices`` and ``encoder`` must share a device. The result does
    not depend on ``chunk_size``. ``dtype`` (e.g. ``torch.bfloat16``) runs the layers
    under autocast and keeps the intermediate (n, hidden) arrays in that type, halving
    their memory; the output layer runs in float32. None keeps float32 throughout.
    ``weight``: (n,) cell weights of the encoder's neighbour means (see :class:`NicheEncoder`).
    """
    was_training = encoder.training
    encoder.eval()
    n = x.shape[0]
    h = x
    for layer in range(encoder.num_layers):
        reduced = dtype is not None and layer < encoder.num_layers - 1  # the output layer runs in float32
        if not reduced and h.dtype != torch.float32:
            h = h.float()  # once per layer (the reduced-type array is freed), not once per chunk
        out = None
        for start in range(0, n, chunk_size):
            targets = torch.arange(start, min(start + chunk_size, n), device=x.device)
            src, tgt = sample_neighbours(indptr, indices, targets, 0, generator=None)
            edge_index = torch.stack([src, tgt - start])
            with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=reduced):
                part = encoder.layer(layer, (h, h[targets]), edge_index, size=(n, targets.numel()),
                                     weight=weight)
            part = part.to(dtype) if reduced else part.float()
            if out is None:
                out = torch.empty(n, part.shape[1], dtype=part.dtype, device=part.device)
            out[targets] = part
        h = out
    encoder.train(was_training)
    return F.normalize(h.float(), dim=1).cpu().numpy()
