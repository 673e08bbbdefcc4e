"""The command line as a user runs it: ``fit`` with every default, and the real ``demo``.

Both go through the command line's ``main`` in this process (a fresh process would only add
its start-up and numba's compiling; ``test_cli`` runs ``python -m cellniche_core``).
"""

import json

import numpy as np
import pytest

from cellniche_core.cellniche import spatial_graph
from cellniche_core.cli import main
from cellniche_core.graph import GraphSettings
from cellniche_core.io import list_runs, load_run
from cellniche_core.keys import RUN_MANIFEST, InputKeys, Keys, RunKeys
from cellniche_core.simulate import DEMO_NICHES


def _cli(capsys, *args: str) -> str:
    """What the command prints on stdout (the run folder); it must succeed."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.strip()


def _assert_graph_is_stored(run) -> None:
    """The run carries its spatial graph, the same one its settings rebuild."""
    assert Keys.GRAPH in run.adata.obsp
    stored = run.graph()
    rebuilt = spatial_graph(run.adata, GraphSettings(**run.model_config["graph"]),
                            InputKeys(**run.model_config["keys"]))
    np.testing.assert_array_equal(stored.indptr, rebuilt.indptr)
    np.testing.assert_array_equal(stored.indices, rebuilt.indices)


@pytest.mark.slow
def test_fit_with_every_default_chooses_k_itself(tmp_path, small_cohort_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, "fit", str(small_cohort_path), "--out", str(out), "--quiet").endswith(str(out))
    manifest = json.loads((out / RUN_MANIFEST).read_text())
    assert manifest["params"]["n_niches"] == "auto" and manifest["params"]["features"] == "auto"
    k = manifest["n_niches"]
    assert 3 <= k <= 15  # auto's range
    assert manifest["niche_stability"]  # auto records the stability it chose k by
    run = load_run(out, with_weights=False)
    assert run.keys == RunKeys()  # every key at its default
    assert run.adata.obs[Keys.NICHE].nunique() == k
    assert run.adata.obsm[Keys.EMBEDDING].shape[0] == run.adata.n_obs
    assert run.adata.obsm[Keys.UMAP].shape == (run.adata.n_obs, 2)
    assert manifest["metrics"]["vs_true_niche"]["ari"] > 0.5
    _assert_graph_is_stored(run)


@pytest.mark.slow
def test_demo_command_writes_the_demo_cohort_and_its_run(tmp_path, capsys):
    run_dir = tmp_path / "data" / "runs" / "demo"
    assert _cli(capsys, "demo", "--out", str(tmp_path / "data"), "--quiet").endswith(str(run_dir))
    assert (tmp_path / "data" / "demo_cohort.h5ad").is_file()
    assert list_runs(tmp_path / "data" / "runs") == [run_dir]
    run = load_run(run_dir)
    assert run.state_dict  # weights load with weights_only=True
    assert run.manifest["n_niches"] == len(DEMO_NICHES)  # the demo shows the planted k
    assert run.adata.obs[Keys.NICHE].nunique() == len(DEMO_NICHES)
    assert "response" in run.adata.obs
    assert run.manifest["metrics"]["vs_true_niche"]["ari"] > 0.7
    _assert_graph_is_stored(run)
