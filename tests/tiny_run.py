"""A tiny real run folder (2 patients, ~400 cells, a few training steps) built in ~1 s.

For dashboard tests that need a run to open but not a meaningful one (access control,
path handling); tests of the pages' content use the ``small_run`` fixture instead.
"""

from __future__ import annotations

from pathlib import Path

TINY = "tiny"


def build_tiny_run(directory: Path) -> Path:
    """Simulate a tiny cohort in ``directory`` and write its run as ``directory/runs/tiny``."""
    from cellniche_core.pipeline import RunOptions, fit_run
    from cellniche_core.simulate import simulate_cohort
    from cellniche_core.train import TrainConfig

    directory.mkdir(parents=True, exist_ok=True)
    cohort = directory / "tiny_cohort.h5ad"
    simulate_cohort(n_patients=2, cells_per_slide=200, seed=1).write_h5ad(cohort)
    options = RunOptions(n_niches=3, train=TrainConfig(n_steps=3, seed=0), device="cpu", umap=False)
    return fit_run([cohort], directory / "runs" / TINY, options)
