import os

# one thread: per-step tensors are small, and two processes with two threads each on two
# cores spin-wait each other ~10x slower
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return torch.device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_cohort_path(tmp_path_factory):
    """A small simulated cohort on disk (4 patients, ~6k cells); never modify it."""
    from cellniche_core.simulate import simulate_cohort

    path = tmp_path_factory.mktemp("cohort") / "small.h5ad"
    simulate_cohort(n_patients=4, cells_per_slide=1200, seed=11).write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, small_cohort_path):
    """A run trained on ``small_cohort_path`` through the public pipeline; read it, never modify it."""
    import anndata as ad

    from cellniche_core.keys import Keys
    from cellniche_core.pipeline import RunOptions, fit_run
    from cellniche_core.train import TrainConfig

    k = ad.read_h5ad(small_cohort_path).obs[Keys.TRUE_NICHE].nunique()
    options = RunOptions(n_niches=k, train=TrainConfig(n_steps=150, seed=0), device="cpu")
    return fit_run([small_cohort_path], tmp_path_factory.mktemp("runs") / "small", options,
                   group_keys=("response",))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny real run folder (see tiny_run.py), for tests that need a run to open, not a
    meaningful one; copy it before changing anything in it."""
    from tiny_run import build_tiny_run

    return build_tiny_run(tmp_path_factory.mktemp("tiny"))
