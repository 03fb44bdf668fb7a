"""analyze(embeddings): class vectors' structure without the m x m matrix (references: numpy, scipy, sklearn)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import cophenet, fcluster, is_monotonic, is_valid_linkage, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score, silhouette_samples

from lightning_classim import HeadSimilarity, analyze
from lightning_classim.head import ClassEmbeddings
from lightning_classim.structure import _embedded


def nested_vectors(m: int, d: int = 48, coarse: int = 6, fine: int = 24, noise: float = 0.9, seed: int = 0):
    """Unit vectors with ``coarse`` families of ``fine // coarse`` subfamilies each (labels by class index)."""
    rng = np.random.default_rng(seed)
    top, sub = rng.standard_normal((coarse, d)), rng.standard_normal((fine, d))
    label = np.arange(m) % fine
    v = top[label // (fine // coarse)] + 0.7 * sub[label] + noise * rng.standard_normal((m, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32), label // (fine // coarse), label


def embeddings(v: np.ndarray) -> ClassEmbeddings:
    return ClassEmbeddings(torch.from_numpy(v), torch.zeros(0, dtype=torch.long))


def dense_of(v: np.ndarray) -> np.ndarray:
    s = np.clip(v.astype(np.float64) @ v.T.astype(np.float64), -1.0, 1.0)
    np.fill_diagonal(s, 1.0)
    return s


def quiet_analyze(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return analyze(*args, **kwargs)


@pytest.fixture(scope="module")
def big():
    """5,000 classes (above DENSE_MAX: the tree route), their dense matrix and the embedded analysis."""
    v, coarse, fine = nested_vectors(5000, noise=0.5)
    return v, coarse, fine, dense_of(v), quiet_analyze(embeddings(v), method="average")


def test_up_to_dense_max_the_embeddings_give_the_dense_analysis():
    v, *_ = nested_vectors(600)
    from_vectors = analyze(embeddings(v))
    from_matrix = analyze(dense_of(v))
    assert not from_vectors.embedded and from_vectors.vectors is None
    assert np.array_equal(from_vectors.order, from_matrix.order)
    assert np.array_equal(from_vectors.groups, from_matrix.groups)
    assert from_vectors.metrics == pytest.approx(from_matrix.metrics, nan_ok=True)


def test_the_tree_is_valid_monotone_and_its_cophenetic_sum_is_numpys():
    v, *_ = nested_vectors(900, seed=3)
    z, coph_dot_s, leaves = _embedded.embedded_tree(v, seed=0)
    assert is_valid_linkage(z) and is_monotonic(z) and z.shape == (899, 4)
    assert sorted(np.concatenate(leaves).tolist()) == list(range(900))
    assert max(len(leaf) for leaf in leaves) <= 4 * _embedded.leaf_size_for(900)
    s = dense_of(v)
    np.testing.assert_allclose(coph_dot_s, cophenet(z) @ squareform(s, checks=False), rtol=1e-9)
    # inside a leaf, the tree is scipy's average linkage of its classes: the same cophenetic distances
    leaf = max(leaves, key=len)
    ref = linkage(np.maximum(1 - squareform(s[np.ix_(leaf, leaf)], checks=False), 0), "average")
    ours = squareform(cophenet(z))[np.ix_(leaf, leaf)]
    np.testing.assert_allclose(ours, squareform(cophenet(ref)), atol=1e-12)


def test_a_leaf_of_two_unlike_sets_is_parted():
    rng = np.random.default_rng(0)
    a, b = np.eye(16)[0], np.eye(16)[1]
    v = np.concatenate([a + 0.2 * rng.standard_normal((5, 16)), b + 0.2 * rng.standard_normal((4, 16))])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x64 = torch.from_numpy(v)
    parts = _embedded.split_mixed(x64, [np.arange(9)], split_height=0.8)
    assert sorted(sorted(p.tolist()) for p in parts) == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    assert [p.tolist() for p in _embedded.split_mixed(x64, [np.arange(9)], split_height=1.5)] == [list(range(9))]


def test_the_route_agrees_with_scipys_average_linkage_on_the_dense_matrix(big):
    _, coarse, fine, s, result = big
    assert result.embedded and result.num_classes == 5000 and result.similarity.shape == (0, 0)
    z_dense = linkage(np.maximum(1 - squareform(s, checks=False), 0), "average")
    for k, truth in ((6, coarse), (24, fine)):
        ours = fcluster(result.linkage, k, "maxclust")
        assert adjusted_rand_score(ours, fcluster(z_dense, k, "maxclust")) >= 0.95
        assert adjusted_rand_score(ours, truth) >= 0.9
    assert [level.n_groups for level in result.levels] == [6, 24]
    assert adjusted_rand_score(result.levels[0].groups, coarse) == 1.0
    assert result.n_groups == 24 and adjusted_rand_score(result.groups, fine) == 1.0


def test_the_metrics_are_the_dense_matrixs(big):
    _, _, _, s, result = big
    m = s.shape[0]
    off = s[np.triu_indices(m, 1)]
    assert result.metrics["offdiag_mean"] == pytest.approx(off.mean(), abs=1e-9)
    assert result.metrics["offdiag_std"] == pytest.approx(off.std(), abs=1e-9)
    skew = np.mean((off - off.mean()) ** 3) / off.std() ** 3
    assert result.metrics["offdiag_skew"] == pytest.approx(skew, abs=0.03)  # sampled
    same = result.groups[:, None] == result.groups[None, :]
    np.fill_diagonal(same, False)
    other = result.groups[:, None] != result.groups[None, :]
    assert result.metrics["mean_within"] == pytest.approx(s[same].mean(), abs=1e-9)
    assert result.metrics["mean_between"] == pytest.approx(s[other].mean(), abs=1e-9)
    d = np.maximum(1 - s, 0)
    np.fill_diagonal(d, 0)
    rows = np.linspace(0, m - 1, 1000).astype(np.intp)
    reference = silhouette_samples(d, result.groups, metric="precomputed")[rows].mean()
    assert result.metrics["silhouette"] == pytest.approx(reference, abs=1e-9)
    coph_corr = np.corrcoef(cophenet(result.linkage), squareform(d, checks=False))[0, 1]
    assert result.metrics["cophenetic_corr"] == pytest.approx(coph_corr, abs=1e-9)
    g = result.summary[0]
    members = list(g.members)
    block = s[np.ix_(members, members)]
    assert g.cohesion == pytest.approx((block.sum() - len(members)) / (len(members) * (len(members) - 1)), abs=1e-9)


def test_heatmap_matrix_is_the_block_means_of_the_ordered_matrix(big):
    _, _, _, s, result = big
    ordered = s[np.ix_(result.order, result.order)]
    factor = 10  # 5000 classes at 500 pixels
    reference = ordered.reshape(500, factor, 500, factor).mean(axis=(1, 3))
    np.testing.assert_allclose(result.heatmap_matrix(500), reference, atol=1e-6)
    np.testing.assert_allclose(result.matrix([3, 7]), s[[3, 7]], atol=1e-6)


def test_drift_against_the_previous_epoch_is_numpys(big):
    v, _, _, s, result = big
    rng = np.random.default_rng(5)
    w = v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    later = quiet_analyze(embeddings(w), method="average", previous=result)
    iu = np.triu_indices(v.shape[0], 1)
    reference = 1 - np.corrcoef(s[iu], dense_of(w)[iu])[0, 1]
    assert later.metrics["drift"] == pytest.approx(reference, abs=1e-9)
    assert later.metrics["group_ari"] == pytest.approx(adjusted_rand_score(later.groups, result.groups), abs=1e-12)


def test_planted_near_duplicate_and_hub_are_found():
    v, _, _ = nested_vectors(4500, seed=7)
    rng = np.random.default_rng(0)
    v[10] = v[11] + 0.01 * rng.standard_normal(v.shape[1]).astype(np.float32)  # a near duplicate of class 11
    v[10] /= np.linalg.norm(v[10])
    hub = v.sum(0)  # alike to every class
    v[20] = hub / np.linalg.norm(hub)
    result = quiet_analyze(embeddings(v), method="average", class_names=[f"c{i}" for i in range(4500)])
    kinds = {(p.kind, p.a, p.b) for p in result.pairs}
    assert ("near_duplicate", "c10", "c11") in kinds
    assert ("hub", "c20", "") in kinds
    means = (dense_of(v).sum(1) - 1) / 4499
    hub_pair = next(p for p in result.pairs if p.kind == "hub")
    assert hub_pair.similarity == pytest.approx(means[20], abs=1e-6)


def test_neighbours_exact_and_probed(monkeypatch):
    v, *_ = nested_vectors(3000, seed=2)
    s = dense_of(v)
    np.fill_diagonal(s, -np.inf)
    exact = -np.sort(-s, axis=1)[:, :5]
    idx, val = _embedded.neighbours(v, 5)
    np.testing.assert_allclose(val, exact, atol=1e-6)
    np.testing.assert_allclose(s[np.arange(3000)[:, None], idx], exact, atol=1e-6)
    # above EXACT_NEIGHBOURS_MAX: among the classes of the 32 leaves nearest to each class's own
    monkeypatch.setattr(_embedded, "EXACT_NEIGHBOURS_MAX", 100)
    leaves = _embedded.leaf_clusters(v, 8, seed=0)
    p_idx, p_val = _embedded.neighbours(v, 5, leaves)
    assert not (p_idx == np.arange(3000)[:, None]).any()
    np.testing.assert_allclose(p_val, s[np.arange(3000)[:, None], p_idx], atol=1e-6)  # true similarities
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(p_idx.tolist(), idx.tolist())])
    assert 0.5 <= recall <= 1.0


def test_gram_correlation_is_numpys():
    a, *_ = nested_vectors(300, seed=1)
    b, *_ = nested_vectors(300, seed=2)
    iu = np.triu_indices(300, 1)
    reference = np.corrcoef(dense_of(a)[iu], dense_of(b)[iu])[0, 1]
    assert _embedded.gram_offdiag_corr(a, b) == pytest.approx(reference, abs=1e-12)


def test_a_taxonomy_and_the_head_metric_end_to_end():
    rng = np.random.default_rng(4)
    v, coarse, fine = nested_vectors(4200, d=32, noise=0.5, seed=4)
    # a head whose logits have these correlations: features with identity covariance, weight = vectors
    h = rng.standard_normal((6000, 32))
    metric = HeadSimilarity(32)
    metric.update(torch.tensor(h, dtype=torch.float32))
    emb = metric.compute(torch.tensor(v))
    result = quiet_analyze(emb, method="average", taxonomy=[coarse.tolist(), fine.tolist()])
    assert result.embedded and result.metrics["taxonomy_ari"] >= 0.95
    assert result.metrics["taxonomy_ari/level2"] >= 0.95
    assert np.isfinite(result.metrics["taxonomy_tree_corr"])


def test_notes_and_errors():
    v, *_ = nested_vectors(4200, seed=6)
    with pytest.warns(UserWarning, match="method='complete' needs the m x m matrix"):
        result = analyze(embeddings(v), find_failed=False)
    assert any("average linkage" in note for note in result.notes)
    with pytest.warns(UserWarning, match="Failed groups are not searched on 4200 classes"):
        analyze(embeddings(v), method="average")
    with pytest.raises(ValueError, match=r"`clip_negative=False` for class embeddings above 4096 classes"):
        analyze(embeddings(v), clip_negative=True)
    with pytest.raises(ValueError, match=r"`distance='correlation'`.*got distance='rows'"):
        analyze(embeddings(v), distance="rows")
    with pytest.raises(ValueError, match=r"`optimal_ordering=False` for class embeddings.*got optimal_ordering=True"):
        analyze(embeddings(v), optimal_ordering=True)
    with pytest.raises(ValueError, match="Expected no `order` for class embeddings"):
        analyze(embeddings(v), order=np.arange(4200), method="average", find_failed=False)
    bad = v.copy()
    bad[3] *= 2.0
    with pytest.raises(ValueError, match="row 3 has norm 2"):
        analyze(embeddings(bad))
    bad[3] = np.nan
    with pytest.raises(ValueError, match="finite class embeddings"):
        analyze(embeddings(bad))
    with pytest.raises(ValueError, match=r"an \(m, r\) float array of unit rows"):
        analyze(ClassEmbeddings(torch.zeros(1, 3), torch.zeros(0, dtype=torch.long)))


def test_pictures_of_embeddings_are_the_dense_matrixs(big):
    from lightning_classim.callback._epoch import offdiag_sample, offdiag_sample_of
    from lightning_classim.picture import labelled_heatmap
    from lightning_classim.render import colormap_lut, render_heatmap

    _, _, _, s, result = big
    step = int(np.abs(np.diff(colormap_lut("RdBu_r").astype(int), axis=0)).max())  # one colour of the colormap
    for pixels in (500, 5000):  # block means, and every cell
        ours = render_heatmap(result, result.order, result.groups, max_pixels=pixels, min_pixels=16).astype(int)
        dense = render_heatmap(s, result.order, result.groups, max_pixels=pixels, min_pixels=16).astype(int)
        assert ours.shape == dense.shape
        differ = np.abs(ours - dense).max(axis=2)
        assert differ.max() <= step and (differ > 0).mean() < 1e-3  # float32 rounding at a colour's edge
    picture = labelled_heatmap(result, result.order, result.groups, max_pixels=256)
    assert picture.box[2] - picture.box[0] == 250
    np.testing.assert_allclose(offdiag_sample_of(result), offdiag_sample(s), atol=1e-6)


def test_an_embedded_result_round_trips_on_disk_and_in_the_checkpoint_state(big, tmp_path):
    from lightning_classim.artifacts import load_snapshot, write_snapshot
    from lightning_classim.callback._state import results_from_state, results_to_state

    result = big[-1]
    folder = write_snapshot(tmp_path, 3, 30, result, None)
    assert (folder / "vectors.npy").exists() and not (folder / "similarity.npy").exists()
    for back in (load_snapshot(folder).result, results_from_state(results_to_state({"head:fc": result}))["head:fc"]):
        assert back.embedded and np.array_equal(back.vectors, result.vectors)
        assert np.array_equal(back.order, result.order) and np.array_equal(back.linkage, result.linkage)
        assert back.to_dict()["groups"] == result.to_dict()["groups"]
    (folder / "vectors.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"similarity\.npy"):
        load_snapshot(folder)


def test_the_nearest_classes_the_analysis_found_are_numpys(big):
    _, _, _, s, result = big
    idx, val = result.nearest
    off = s.copy()
    np.fill_diagonal(off, -np.inf)
    np.testing.assert_allclose(val, -np.sort(-off, axis=1)[:, :16], atol=1e-6)
    np.testing.assert_allclose(off[np.arange(off.shape[0])[:, None], idx], val, atol=1e-6)


def test_bad_class_vectors_on_disk_and_in_a_picture(big):
    from lightning_classim.render import render_heatmap
    from lightning_classim.structure import StructureResult

    result = big[-1]
    arrays = result.arrays()
    arrays["vectors"] = arrays["vectors"][:10]
    with pytest.raises(ValueError, match=r"Expected class vectors of shape \(5000, r\) for 5000 classes"):
        StructureResult.from_parts(arrays, result.to_dict(), list(result.class_names))
    with pytest.raises(ValueError, match=r"Expected class vectors of shape \(m, r\), but got shape \(5,\)"):
        render_heatmap(ClassEmbeddings(torch.zeros(5), torch.zeros(0, dtype=torch.long)))


def test_split_groups_at_the_coarse_level_from_embeddings(monkeypatch):
    # 8 subclasses of 2 classes in 4 superclasses built from orthonormal directions; the first subclass of the first
    # and of the second superclass share one more: a dense block off the diagonal. Cut into the 8 subclasses there is
    # no finer cut to compare sub-blocks in (4 x 8 > 16 / 2): the route without the matrix (forced below its switch)
    # finds the split group at the coarse level, as the dense route does from the same dot products
    basis = np.eye(32)
    sub = np.repeat(np.arange(8), 2)
    v = 1.2 * basis[sub // 2] + 1.0 * basis[4 + sub] + 0.3 * basis[12 + np.arange(16)]
    v[sub == 0] += 1.2 * basis[31]
    v[sub == 2] += 1.2 * basis[31]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    dense = analyze(dense_of(v), n_groups=8, method="average")
    monkeypatch.setattr(_embedded, "DENSE_MAX", 0)
    from_vectors = quiet_analyze(embeddings(v.astype(np.float32)), n_groups=8, method="average")
    assert from_vectors.embedded
    for res in (dense, from_vectors):
        assert adjusted_rand_score(sub, res.groups) == 1.0
        assert res.levels[0].n_groups == 4
        ((split),) = res.split_groups
        assert set(split.members) == {(0, 1), (4, 5)}
        s = dense_of(v)[np.ix_([0, 1], [4, 5])].mean()
        assert split.similarity == pytest.approx(s, abs=1e-6)
