"""Compile the CPU code once, at set-up, so that a user's first run does not wait for it.

    python -m cellniche_core.warm

The sampler's numba kernels and umap-learn's functions are compiled on first use and cached
on disk (:mod:`cellniche_core.sampling_cpu`, :func:`cellniche_core.layout._import_umap`),
which costs ~15-20 s once per installation. ``scripts/setup.sh`` runs this module after
installing the requirements, so that the dashboard's first demo build and a first ``fit``
start from a warm cache. It trains a few steps on a tiny simulated cohort, embeds it, calls
niches and lays out a UMAP; nothing is written but the caches.
"""

from __future__ import annotations

import time


def warm_caches(*, seed: int = 0) -> float:
    """Run every compiled path once on tiny data; returns the seconds it took."""
    t = time.perf_counter()
    from .cellniche import CellNiche
    from .keys import Keys
    from .layout import compute_umap
    from .niches import call_niches
    from .simulate import simulate_cohort
    from .train import TrainConfig

    adata = simulate_cohort(n_patients=2, cells_per_slide=300, slides_per_patient=1, seed=seed)
    for strategy in ("freq", "or"):  # walk pairs alone use one fused kernel, similarity pairs two
        model = CellNiche(config=TrainConfig(n_steps=3, seed=seed, strategy=strategy)).fit(adata, device="cpu")
    model.embed(adata, device="cpu")
    call_niches(adata.obsm[Keys.EMBEDDING], 3, seed=seed)
    compute_umap(adata.obsm[Keys.EMBEDDING], seed=seed)
    return time.perf_counter() - t


if __name__ == "__main__":
    print(f"compiled code cached in {warm_caches():.1f} s")
