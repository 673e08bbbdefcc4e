import numpy as np
import pytest
import torch

from cellniche_core.cellniche import CellNiche
from cellniche_core.embed import embed_nodes
from cellniche_core.graph import build_knn_graph
from cellniche_core.keys import Keys
from cellniche_core.model import NicheEncoder
from cellniche_core.sampling import sample_neighbourhood
from cellniche_core.simulate import simulate_cohort
from cellniche_core.train import TrainConfig, resolve_device, steps_for


@pytest.fixture(scope="module")
def tiny():
    return simulate_cohort(n_patients=2, cells_per_slide=600, slides_per_patient=1, seed=4)


def random_graph(n=500, seed=0):
    rng = np.random.default_rng(seed)
    g = build_knn_graph(rng.uniform(0, 100, (n, 2)), n_neighbors=6)
    return torch.from_numpy(g.indptr), torch.from_numpy(g.indices)


def test_trimmed_forward_equals_full_forward_on_targets():
    indptr, indices = random_graph()
    torch.manual_seed(0)
    enc = NicheEncoder(7, 16, 8, num_layers=3).eval()
    x = torch.randn(500, 7)
    targets = torch.tensor([3, 40, 41, 300])
    hood = sample_neighbourhood(indptr, indices, targets, (0, 0, 0), generator=None)
    with torch.no_grad():
        trimmed = enc(x[hood.n_id], hood.edge_index, hood.nodes_per_hop, hood.edges_per_hop)
        full_graph = enc(x, torch.stack([indices, torch.repeat_interleave(
            torch.arange(500), indptr[1:] - indptr[:-1])]))
    assert trimmed.shape == (4, 8)
    np.testing.assert_allclose(trimmed.numpy(), full_graph[targets].numpy(), atol=1e-5)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_chunked_inference_does_not_depend_on_chunk_size(dtype):
    indptr, indices = random_graph()
    torch.manual_seed(1)
    enc = NicheEncoder(5, 16, 8)
    x = torch.randn(500, 5)
    a = embed_nodes(enc, x, indptr, indices, chunk_size=64, dtype=dtype)
    b = embed_nodes(enc, x, indptr, indices, chunk_size=10_000, dtype=dtype)
    np.testing.assert_allclose(a, b, atol=1e-5 if dtype is None else 1e-2)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert enc.training  # the mode is restored
    if dtype is not None:  # the reduced type stays close to float32
        full = embed_nodes(enc, x, indptr, indices, chunk_size=64)
        assert np.median((a * full).sum(1)) > 0.99


def test_weighted_inference_does_not_depend_on_chunk_size_and_equals_the_trimmed_forward():
    indptr, indices = random_graph()
    torch.manual_seed(2)
    enc = NicheEncoder(5, 16, 8).eval()
    x = torch.randn(500, 5)
    w = torch.rand(500) + 0.2
    a = embed_nodes(enc, x, indptr, indices, chunk_size=64, weight=w)
    b = embed_nodes(enc, x, indptr, indices, chunk_size=10_000, weight=w)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # the reduced type a GPU uses (here under the CPU's autocast): the weighted mean runs in
    # float32 inside it and the result stays close to float32 throughout
    reduced = embed_nodes(enc, x, indptr, indices, chunk_size=64, weight=w, dtype=torch.bfloat16)
    assert reduced.dtype == np.float32 and np.median((reduced * a).sum(1)) > 0.99
    assert not np.allclose(a, embed_nodes(enc, x, indptr, indices))  # the weights change it
    targets = torch.tensor([7, 250])
    hood = sample_neighbourhood(indptr, indices, targets, (0, 0), generator=None)
    with torch.no_grad():
        trimmed = enc(x[hood.n_id], hood.edge_index, hood.nodes_per_hop, hood.edges_per_hop, weight=w[hood.n_id])
    np.testing.assert_allclose(torch.nn.functional.normalize(trimmed, dim=1).numpy(), a[[7, 250]], atol=1e-5)


def test_same_seed_same_embedding_on_cpu(tiny):
    def run(seed):
        a = tiny.copy()
        CellNiche(config=TrainConfig(n_steps=15, seed=seed)).fit(a, device="cpu").embed(a, device="cpu")
        return a.obsm[Keys.EMBEDDING]

    e0, e0b, e1 = run(0), run(0), run(1)
    np.testing.assert_array_equal(e0, e0b)
    assert not np.allclose(e0, e1)


def test_inputs_kept_from_training_embed_as_inputs_made_anew(tiny):
    """``fit(keep_inputs=True)`` then ``embed(inputs=...)`` (what a run does, to read X once)."""
    a = tiny.copy()
    a.obs = a.obs.drop(columns="cell_type")  # expression inputs: the case worth sparing
    model = CellNiche(features="expr", config=TrainConfig(n_steps=5, seed=0)).fit(a, device="cpu", keep_inputs=True)
    assert model.inputs is not None and model.inputs[0].shape == (a.n_obs, model.spec.in_channels)
    kept, fresh = a.copy(), a.copy()
    kept_report = model.embed(kept, device="cpu", inputs=model.inputs)
    fresh_report = model.embed(fresh, device="cpu")
    np.testing.assert_array_equal(kept.obsm[Keys.EMBEDDING], fresh.obsm[Keys.EMBEDDING])
    assert kept_report == fresh_report
    other = a.copy()  # the inputs given are the ones embedded
    model.embed(other, device="cpu", inputs=(np.zeros_like(model.inputs[0]), {}))
    assert not np.allclose(other.obsm[Keys.EMBEDDING], fresh.obsm[Keys.EMBEDDING])
    with pytest.raises(ValueError, match="rows"):
        model.embed(a[:10].copy(), device="cpu", inputs=model.inputs)
    assert CellNiche(config=TrainConfig(n_steps=2)).fit(a.copy(), device="cpu").inputs is None


def test_training_lowers_the_loss_and_reports_progress(tiny):
    seen = []
    m = CellNiche(config=TrainConfig(n_steps=60, seed=0)).fit(
        tiny.copy(), device="cpu", progress=lambda s, n, loss: seen.append((s, n)))
    loss = m.history.loss
    assert np.mean(loss[-10:]) < np.mean(loss[:10])
    assert seen[0] == (1, 60) and seen[-1] == (60, 60)
    # the time spent drawing batches is measured, and is part of the training time
    assert 0 < m.history.sample_seconds < m.history.seconds


def test_training_can_be_stopped(tiny):
    calls = []
    m = CellNiche(config=TrainConfig(n_steps=100, seed=0)).fit(
        tiny.copy(), device="cpu", should_stop=lambda: len(calls.append(1) or calls) >= 5)
    assert m.history.steps == 5


@pytest.mark.parametrize("features", ["pheno", "expr", "pheno_expr"])
@pytest.mark.parametrize("strategy", ["freq", "and"])
def test_every_feature_mode_and_strategy_trains(tiny, features, strategy):
    a = tiny.copy()
    m = CellNiche(features=features, config=TrainConfig(n_steps=5, strategy=strategy)).fit(a, device="cpu")
    m.embed(a, device="cpu")
    assert np.isfinite(a.obsm[Keys.EMBEDDING]).all()
    n_types = a.obs[Keys.CELL_TYPE].nunique()
    expected = {"pheno": n_types, "expr": a.n_vars, "pheno_expr": n_types + a.n_vars}[features]
    assert m.spec.in_channels == expected


def test_saved_state_rebuilds_the_same_model(tiny):
    a = tiny.copy()
    m = CellNiche(config=TrainConfig(n_steps=10)).fit(a, device="cpu")
    m.embed(a, device="cpu")
    clone = CellNiche.from_state(m.model_config(), m.state_dict())
    b = tiny.copy()
    clone.embed(b, device="cpu")
    np.testing.assert_allclose(a.obsm[Keys.EMBEDDING], b.obsm[Keys.EMBEDDING], atol=1e-6)


@pytest.mark.parametrize("head", [True, False])
def test_a_run_saved_before_the_head_was_optional_still_loads(tiny, head):
    a = tiny.copy()
    m = CellNiche(config=TrainConfig(n_steps=3, projection=head)).fit(a, device="cpu")
    config = m.model_config()
    if head:  # as written before the option existed: no "projection" key, always a head
        del config["train"]["projection"]
    clone = CellNiche.from_state(config, m.state_dict())
    assert clone.config.projection is head
    assert any(k.startswith("head.") for k in m.state_dict()) is head


def test_a_run_saved_before_area_weights_keeps_its_plain_means(tiny):
    a = tiny.copy()
    m = CellNiche(config=TrainConfig(n_steps=5, area_weights=False)).fit(a, device="cpu")
    m.embed(a, device="cpu")
    config = m.model_config()
    del config["train"]["area_weights"]  # as written before the option existed
    clone = CellNiche.from_state(config, m.state_dict())
    assert clone.config.area_weights is False and TrainConfig().area_weights is True
    b = tiny.copy()
    clone.embed(b, device="cpu")
    np.testing.assert_allclose(a.obsm[Keys.EMBEDDING], b.obsm[Keys.EMBEDDING], atol=1e-6)
    weighted = CellNiche.from_state({**config, "train": {**config["train"], "area_weights": True}}, m.state_dict())
    weighted.embed(b, device="cpu")
    assert not np.allclose(a.obsm[Keys.EMBEDDING], b.obsm[Keys.EMBEDDING], atol=1e-4)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    assert steps_for(10_000) < steps_for(10_000_000)


@pytest.mark.gpu
def test_cuda_training_and_embedding(tiny):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    a = tiny.copy()
    m = CellNiche(config=TrainConfig(n_steps=20)).fit(a, device="cuda")
    native = torch.cuda.get_device_capability()[0] >= 8
    assert m.history.precision == ("bfloat16" if native else "float32")
    m.embed(a, device="cuda")
    assert np.isfinite(a.obsm[Keys.EMBEDDING]).all()
    b = tiny.copy()
    m.embed(b, device="cpu")  # float32 on the CPU: bfloat16 on the GPU stays close to it
    cos = (a.obsm[Keys.EMBEDDING] * b.obsm[Keys.EMBEDDING]).sum(1)
    assert np.median(cos) > 0.99


def test_bfloat16_training_and_embedding_stay_close_to_float32(tiny):
    """The mixed-precision path (used on GPUs) also runs on the CPU, where it can be checked."""
    from cellniche_core.train import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("fp8", torch.device("cpu"))
    a, b = tiny.copy(), tiny.copy()
    m = CellNiche(config=TrainConfig(n_steps=30, seed=0, precision="bf16")).fit(a, device="cpu")
    assert m.history.precision == "bfloat16" and np.isfinite(m.history.loss).all()
    m.embed(a, device="cpu")
    m.config.precision = "fp32"
    m.embed(b, device="cpu")
    cos = (a.obsm[Keys.EMBEDDING] * b.obsm[Keys.EMBEDDING]).sum(1)
    assert np.median(cos) > 0.99 and cos.min() > 0.9


def test_batch_mixing_separates_mixed_from_apart_samples(monkeypatch):
    """Two samples on top of each other score near 1, side by side near 0, scored on a subset or all."""
    from cellniche_core import metrics

    rng = np.random.default_rng(0)
    n = 3000
    mixed = rng.normal(size=(n, 8)).astype(np.float32)
    apart = mixed.copy()
    apart[: n // 2, 0] += 20.0  # sample A far from sample B
    samples = np.repeat(["A", "B"], n // 2)
    for scored in (metrics._MIXING_CELLS, 400):
        monkeypatch.setattr(metrics, "_MIXING_CELLS", scored)
        high = metrics.batch_mixing(mixed, samples).loc["cohort", "mixing"]
        low = metrics.batch_mixing(apart, samples).loc["cohort", "mixing"]
        assert high > 0.9 and low < 0.1, (scored, high, low)
    # identical embeddings: every cell ties with its copies; self is still left out
    twins = np.repeat(np.eye(4, dtype=np.float32), 50, axis=0)
    same = metrics.batch_mixing(twins, np.tile(["A", "B"], 100), n_neighbors=10)
    assert same.loc["cohort", "mixing"] > 0.8


def test_batch_mixing_on_the_run_device_matches_the_cpu(device):
    from cellniche_core import metrics

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(2000, 16)).astype(np.float32)
    samples = rng.choice(["A", "B", "C"], 2000)
    emb[samples == "C", 0] += 3.0  # one sample partly apart, so the score is neither 0 nor 1
    groups = rng.choice(["n1", "n2"], 2000)
    on_device = metrics.batch_mixing(emb, samples, groups, device=device)
    on_cpu = metrics.batch_mixing(emb, samples, groups)
    assert 0.2 < on_cpu["mixing"].min() and on_cpu["mixing"].max() < 0.95
    np.testing.assert_allclose(on_device["mixing"], on_cpu["mixing"], atol=0.02)


def test_umap_places_unfitted_cells_beside_their_own_cluster():
    from cellniche_core.layout import compute_umap, nearest_cosine

    rng = np.random.default_rng(4)
    centres = np.eye(8, dtype=np.float32)[:3] * 5
    labels = rng.integers(0, 3, 900)
    emb = centres[labels] + rng.normal(scale=0.3, size=(900, 8)).astype(np.float32)
    ref, query = emb[:100], emb[100:]
    expected = np.argsort(-(query / np.linalg.norm(query, axis=1, keepdims=True))
                          @ (ref / np.linalg.norm(ref, axis=1, keepdims=True)).T, axis=1)[:, :3]
    assert (nearest_cosine(ref, query, k=3, chunk_bytes=64 * 4 * 100) == expected).all()

    # umap-learn gets exact neighbours; a cell's distance to itself is exactly 0
    from cellniche_core.layout import fitted_neighbours

    knn, dist = fitted_neighbours(emb[:300], 15)
    assert knn.shape == dist.shape == (300, 15) and (knn[:, 0] == np.arange(300)).all()
    assert (dist[:, 0] == 0).all() and (dist[:, 1:] > 0).all() and (np.diff(dist, axis=1) >= -1e-6).all()
    unit = emb[:300] / np.linalg.norm(emb[:300], axis=1, keepdims=True)
    brute = np.sort(1 - unit @ unit.T, axis=1)[:, :15]
    np.testing.assert_allclose(dist[:, 1:], brute[:, 1:], atol=1e-5)
    assert nearest_cosine(emb[:0], emb[:3], k=3).shape == (3, 0)

    xy = compute_umap(emb, seed=0, max_fit_cells=300)
    assert xy.shape == (900, 2) and np.isfinite(xy).all()
    centroid = np.stack([xy[labels == c].mean(0) for c in range(3)])
    nearest = np.argmin(((xy[:, None, :] - centroid[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.95


def test_niche_calling_keeps_rare_niches_apart_when_a_large_one_has_two_parts():
    """KMeans splits a large two-part niche and merges two rare ones; the merge candidate wins."""
    from cellniche_core.metrics import agreement
    from cellniche_core.niches import _kmeans, call_niches

    rng = np.random.default_rng(0)

    def blob(n, centre):
        return np.asarray(centre + [0] * (8 - len(centre)), float) + rng.normal(scale=0.03, size=(n, 8))

    emb = np.vstack([blob(4500, [1, 0.1]), blob(4500, [1, -0.1]),  # one large niche, two close parts
                     blob(300, [0, 0, 1]), blob(300, [0, 0, 1, 0.6])]).astype(np.float32)  # two rare niches
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    truth = np.repeat([0, 1, 2], [9000, 300, 300])
    assert agreement(truth, _kmeans(emb, 3, 0).predict(emb))["ari"] < 0.5
    labels, info = call_niches(emb, 3, seed=0)
    assert agreement(truth, labels)["ari"] > 0.99
    assert info["clustering"]["method"].startswith("merged")
    silhouettes = info["clustering"]["silhouette"]
    assert silhouettes[info["clustering"]["method"]] == max(silhouettes.values())


def test_niches_cut_a_smooth_gradient_alike_whatever_the_seed():
    """Cells along a gradient have many near-equal KMeans optima: the niches must not move
    with the seed (with 4 restarts two seeds agreed at ARI 0.6-0.8 on this data)."""
    from cellniche_core.metrics import agreement
    from cellniche_core.niches import call_niches

    rng = np.random.default_rng(0)
    t = rng.random(3000)
    emb = np.c_[np.cos(3 * t), np.sin(3 * t), 0.3 * rng.standard_normal((3000, 2))].astype(np.float32)
    first = call_niches(emb, 7, seed=0)[0]
    agree = [agreement(first, call_niches(emb, 7, seed=s)[0])["ari"] for s in (1, 2, 3)]
    assert min(agree) > 0.85


def test_niche_calling_keeps_kmeans_for_compact_balanced_niches():
    from cellniche_core.metrics import agreement
    from cellniche_core.niches import call_niches

    rng = np.random.default_rng(1)
    centres = np.eye(8, dtype=np.float32)[:4]
    truth = rng.integers(0, 4, 4000)
    emb = centres[truth] + rng.normal(scale=0.05, size=(4000, 8)).astype(np.float32)
    labels, info = call_niches(emb, 4, seed=0)
    assert agreement(truth, labels)["ari"] > 0.99
    assert sorted(np.unique(labels)) == ["N1", "N2", "N3", "N4"]


def test_auto_k_takes_the_largest_k_as_stable_as_the_most_stable_one():
    """Not the level of the curve: its best k and that k's own spread decide."""
    import pandas as pd

    from cellniche_core.niches import pick_stable_k

    def table(values, spread=0.01):
        return pd.DataFrame({"k": range(3, 3 + len(values)), "stability": values,
                             "stability_min": [v - spread for v in values]})

    # stable at every k (a finer structure cut alike each time): the plateau ends at 6
    assert pick_stable_k(table([0.995, 0.997, 0.998, 0.998, 0.936, 0.923, 0.977, 0.919])) == 6
    # a dip does not end the plateau; a later k as stable as the best counts
    assert pick_stable_k(table([0.996, 0.821, 0.995, 0.997, 0.962, 0.969])) == 6
    # within twice the best's spread: 0.995 is as stable as 0.997 whose least pair is 0.996
    near = pd.DataFrame({"k": [3, 4, 5, 6, 7], "stability": [0.997, 0.995, 0.990, 0.995, 0.977],
                         "stability_min": [0.996, 0.993, 0.985, 0.991, 0.962]})
    assert pick_stable_k(near) == 6
    assert pick_stable_k(near.assign(stability=[0.997, 0.995, 0.990, 0.994, 0.977])) == 4  # 0.994 < 0.995
    # a noisier best k admits more
    assert pick_stable_k(table([0.95, 0.99, 0.97, 0.80, 0.70], spread=0.03)) == 5
    assert pick_stable_k(table([0.50, 0.70, 0.60])) == 4  # none stable: the most stable alone


def test_auto_k_finds_separated_niches():
    from cellniche_core.metrics import agreement
    from cellniche_core.niches import call_niches, niche_stability, pick_stable_k

    rng = np.random.default_rng(2)
    centres = np.eye(10, dtype=np.float32)[:5] * 3
    truth = rng.integers(0, 5, 6000)
    emb = centres[truth] + rng.normal(scale=0.3, size=(6000, 10)).astype(np.float32)
    labels, info = call_niches(emb, "auto", seed=0)
    assert info["n_niches"] == 5 and agreement(truth, labels)["ari"] > 0.99
    measured = [row["k"] for row in info["stability"]]
    assert measured == list(range(3, 16))  # every k of the range is measured
    best = max(info["stability"], key=lambda row: row["stability"])
    assert best["k"] in (3, 4, 5) and info["stability"][3]["stability"] < best["stability_min"]  # k = 6 splits one
    full = niche_stability(emb, range(3, 16), seed=0)
    assert pick_stable_k(full) == 5
    assert full.to_dict(orient="records") == info["stability"]


def test_training_runs_on_the_torch_sampler_used_on_gpus(tiny, monkeypatch):
    """The vectorised torch sampler (the GPU path) trains too; forced here on the CPU."""
    from cellniche_core import sampling

    monkeypatch.setenv("CELLNICHE_SAMPLER", "torch")
    assert not sampling.compiled_kernels(torch.device("cpu"))
    m = CellNiche(config=TrainConfig(n_steps=40, seed=0, strategy="and")).fit(tiny.copy(), device="cpu")
    assert np.isfinite(m.history.loss).all() and np.mean(m.history.loss[-10:]) < np.mean(m.history.loss[:10])
    assert m.history.mean_positives_per_cell > 0
