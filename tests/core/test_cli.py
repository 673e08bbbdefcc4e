import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from cellniche_core.cli import main
from cellniche_core.io import load_run
from cellniche_core.keys import RUN_ADATA, Keys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--sample-key", "--cell-type-key", "--features", "--n-niches", "--radius", "--knn",
                 "--seed", "--device"):
        assert flag in text


def test_radius_and_knn_are_exclusive(capsys, small_cohort_path, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(small_cohort_path), "--out", str(tmp_path / "r"), "--radius", "30", "--knn", "8"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_run_folder_from_the_pipeline_is_complete(small_run, small_cohort_path):
    run = load_run(small_run)
    a = run.adata
    src = ad.read_h5ad(small_cohort_path)
    assert a.n_obs == src.n_obs
    assert list(a.obs_names) == list(src.obs_names)
    for col in src.obs.columns:  # the input obs is kept
        assert col in a.obs
    emb = a.obsm[Keys.EMBEDDING]
    assert emb.dtype == np.float32 and emb.shape == (a.n_obs, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert a.obsm[Keys.UMAP].shape == (a.n_obs, 2) and np.isfinite(a.obsm[Keys.UMAP]).all()
    assert a.obs[Keys.NICHE].dtype == "category"
    m = run.manifest
    for key in ("params", "seed", "versions", "device", "timings_s", "metrics", "training"):
        assert key in m
    assert m["versions"]["torch"].startswith("2.13")
    assert 0 < m["training"]["sampling_seconds"] <= m["training"]["seconds"] <= m["timings_s"]["train"]
    assert set(run.state_dict) and all(hasattr(v, "shape") for v in run.state_dict.values())
    assert run.model_config["train"]["seed"] == 0
    assert a.uns[Keys.UNS]["n_cells"] == a.n_obs
    # the small cohort is recovered well even with a short training
    assert m["metrics"]["vs_true_niche"]["ari"] > 0.6


@pytest.mark.slow
def test_fit_through_the_command_line(tmp_path, small_cohort_path):
    before = small_cohort_path.read_bytes()
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="2")
    cmd = [sys.executable, "-m", "cellniche_core", "fit", str(small_cohort_path), "--out", str(out),
           "--n-niches", "5", "--steps", "40", "--no-umap", "--seed", "3", "--device", "cpu", "--knn", "8",
           "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_niches"] == 5 and manifest["seed"] == 3
    assert manifest["params"]["graph"]["n_neighbors"] == 8
    a = ad.read_h5ad(out / RUN_ADATA)
    assert a.obs[Keys.NICHE].nunique() == 5
    assert small_cohort_path.read_bytes() == before  # input untouched
    # writing again without --overwrite is refused with a clear message, run untouched
    res2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res2.returncode == 2 and "exists" in res2.stderr
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_bad_input_exits_with_a_message(tmp_path, capsys):
    bad = tmp_path / "empty.h5ad"
    bad.write_bytes(b"")
    code = main(["fit", str(bad), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "empty.h5ad" in err and "error:" in err
    assert not (tmp_path / "run").exists()


def test_cuda_request_without_gpu_is_refused(tmp_path, small_cohort_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main(["fit", str(small_cohort_path), "--out", str(tmp_path / "run"), "--device", "cuda", "--quiet"])
    assert code == 2 and "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_training_bar_shows_the_step_without_a_stray_separator(capsys):
    from cellniche_core.progress import TerminalProgress

    progress = TerminalProgress(bar=True)
    progress("read", 0.0, "reading 2 files")
    progress("train", 0.4, "step 120/300 · loss 3.21")
    progress("train", 1.0, "step 300/300 · loss 2.90")
    progress("write", 0.0, "writing the run")
    err = capsys.readouterr().err
    assert "read: reading 2 files" in err and "write: writing the run" in err
    bar = err.split("\r")[-1].splitlines()[0] if "\r" in err else err.splitlines()[1]
    assert bar.startswith("train: 100%|") and bar.endswith("| step 300/300 · loss 2.90")
    assert ", step" not in err


def test_training_in_a_log_is_a_line_per_tenth_of_the_steps(capsys):
    """stderr is not a terminal here (a job's log): no bar redrawn at every step."""
    from cellniche_core.progress import TerminalProgress

    progress = TerminalProgress()
    for step in range(1, 801):
        progress("train", step / 800, f"step {step}/800, loss 3.000")
    progress("embed", 0.0, "embedding 5 cells")
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    train = [line for line in lines if "] train: " in line]
    assert len(train) == 11 and train[0].endswith("  0% step 1/800, loss 3.000")
    assert train[1].endswith(" 10% step 80/800, loss 3.000")
    assert train[-1].endswith("100% step 800/800, loss 3.000")
    assert lines[-1].endswith("] embed: embedding 5 cells")
