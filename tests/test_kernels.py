"""The compiled linkage against scipy's, and the analysis with and without it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from scipy.cluster.hierarchy import cophenet, leaves_list, linkage, to_tree
from scipy.spatial.distance import squareform

from lightning_classim import analyze
from lightning_classim.structure import _kernels, _reference

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")

#: Both backends of the analysis, each tested against scipy and numpy: the compiled kernels and their reference.
BACKENDS = pytest.mark.parametrize("backend", [_kernels, _reference], ids=["compiled", "reference"])


def _condensed_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((120, 8))
    planted = np.repeat(np.eye(6), 20, axis=0) * 3 + rng.standard_normal((120, 6))
    return {
        "correlation": squareform(1 - np.corrcoef(rows), checks=False),
        "planted blocks": squareform(1 - np.corrcoef(planted), checks=False),
        # many exact ties: the tie rules (previous chain element first, then the lowest index) decide
        "quarter steps": rng.integers(0, 5, 57 * 56 // 2) / 4.0,
        "all equal": np.ones(40 * 39 // 2),
        "two classes": np.array([0.3]),
        "three classes": np.array([0.5, 0.5, 0.2]),
    }


@pytest.mark.parametrize("method", sorted(_kernels.NN_CHAIN_METHODS))
@pytest.mark.parametrize("case", sorted(_condensed_cases()))
def test_nn_chain_equals_scipy_bit_for_bit(method: str, case: str) -> None:
    y = _condensed_cases()[case]
    expected = linkage(y, method)
    got = _kernels.nn_chain_linkage(squareform(y), method)
    np.testing.assert_array_equal(got, expected)


@BACKENDS
def test_one_minus_takes_the_upper_triangle_as_scipy_does(backend) -> None:
    rng = np.random.default_rng(2)
    sim = rng.uniform(-1, 1, (150, 150))  # not symmetric: the upper triangle decides, as in squareform; 3 tiles
    expected = squareform(squareform(1.0 - sim, checks=False))
    np.testing.assert_array_equal(backend.one_minus(sim), expected)


def test_nn_chain_rejects_a_matrix_it_cannot_work_in() -> None:
    d = squareform(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"`dist` to be a square C-contiguous float64 matrix, but got dtype float32"):
        _kernels.nn_chain_linkage(d.astype(np.float32), "complete")
    with pytest.raises(ValueError, match=r"but got dtype float64 and shape \(3, 3\)"):
        _kernels.nn_chain_linkage(np.asfortranarray(d), "complete")


def _planted_similarity(m: int, blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.eye(blocks), -(-m // blocks), axis=0)[:m] * 2 + rng.standard_normal((m, blocks))
    return np.corrcoef(rows)


@pytest.mark.parametrize("method", ["complete", "average", "weighted", "ward", "single", "centroid"])
def test_analyze_gives_the_same_result_with_and_without_the_kernel(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = _planted_similarity(300, 6)
    with_kernel = analyze(sim, method=method)
    monkeypatch.setattr(_kernels, "ENABLED", False)
    without = analyze(sim, method=method)
    np.testing.assert_array_equal(with_kernel.linkage, without.linkage)
    reference = linkage(squareform(_distances(sim, method), checks=False), method)
    np.testing.assert_array_equal(with_kernel.linkage, reference)
    np.testing.assert_array_equal(with_kernel.order, without.order)
    np.testing.assert_array_equal(with_kernel.groups, without.groups)
    assert with_kernel.metrics == pytest.approx(without.metrics, rel=1e-12)


@pytest.mark.parametrize(
    "options",
    [{"distance": "rows"}, {"clip_negative": True, "method": "average"}, {"method": "weighted", "n_groups": 4}],
    ids=["rows", "clipped", "weighted"],
)
def test_analyze_with_options_is_the_same_with_and_without_the_kernels(
    options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = 0.9 * _planted_similarity(200, 5, seed=3) - 0.1  # some similarities below 0 (within [-1, 1]), for clipping
    np.fill_diagonal(sim, 1.0)
    earlier = analyze(_planted_similarity(200, 5, seed=4))
    with_kernel = analyze(sim, previous=earlier, **options)
    monkeypatch.setattr(_kernels, "ENABLED", False)
    without = analyze(sim, previous=earlier, **options)
    for field in ("linkage", "order", "groups"):
        np.testing.assert_array_equal(getattr(with_kernel, field), getattr(without, field))
    assert with_kernel.metrics == pytest.approx(without.metrics, rel=1e-9)
    assert [f.members for f in with_kernel.failed_groups] == [f.members for f in without.failed_groups]


def _distances(sim: np.ndarray, method: str) -> np.ndarray:
    d = np.maximum(1.0 - sim, 0.0)
    return np.sqrt(2.0 * d) if method in ("ward", "centroid", "median") else d


@pytest.mark.parametrize("compiled", [True, False])
def test_large_analysis_cophenetic_correlation_without_the_condensed_vector(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,600 classes: one block of 1,500 classes is too large for the cophenetic sums from the fine block sums, so they
    # come from the compiled cross sums over the tree (or, without the kernels, scipy's cophenet on all pairs)
    monkeypatch.setattr(_kernels, "ENABLED", compiled)
    rng = np.random.default_rng(1)
    rows = np.concatenate([np.ones((1500, 1)) * 3, np.zeros((100, 1))]) + rng.standard_normal((1600, 4))
    sim = np.corrcoef(rows)
    result = analyze(sim, n_groups=1, find_failed=False)
    y = squareform(1.0 - sim, checks=False)
    z = linkage(y, "complete")
    np.testing.assert_array_equal(result.linkage, z)
    assert result.metrics["cophenetic_corr"] == pytest.approx(cophenet(z, y)[0], rel=1e-9)


def _random_tree(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sim = np.corrcoef(rng.standard_normal((m, 6)))
    return sim, linkage(squareform(1.0 - sim, checks=False), "average")


@BACKENDS
def test_max_asymmetry_and_non_finite_entries(backend) -> None:
    rng = np.random.default_rng(3)
    mat = rng.uniform(-1, 1, (150, 150))  # 3 tiles of 64, the last one partial
    assert backend.max_asymmetry(mat) == np.abs(mat - mat.T).max()
    sym = (mat + mat.T) / 2
    assert backend.max_asymmetry(sym) == 0.0
    for index, value in [((5, 140), np.nan), ((140, 5), np.inf), ((77, 77), -np.inf), ((149, 149), np.nan)]:
        bad = sym.copy()
        bad[index] = value
        assert not np.isfinite(backend.max_asymmetry(bad)), index


@pytest.mark.parametrize("m", [2, 3, 6, 130])
@BACKENDS
def test_upper_moments_as_numpy(m: int, backend) -> None:
    # rows of every length modulo the 4 interleaved accumulators
    rng = np.random.default_rng(4)
    mat = rng.standard_normal((m, m)) ** 3  # skewed; the lower triangle is ignored
    pairs = mat[np.triu_indices(m, k=1)]
    c = pairs - pairs.mean()
    expected = (pairs.mean(), float(np.sum(c**2)), float(np.sum(c**3)), pairs.max(), pairs.min())
    assert backend.upper_moments(mat) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("m", [2, 3, 64, 257])
@BACKENDS
def test_leaf_order_is_scipys_leaves_list(m: int, backend) -> None:
    _, z = _random_tree(m, m)
    np.testing.assert_array_equal(backend.leaf_order(z[:, :2]), leaves_list(z))


@BACKENDS
def test_leaf_order_of_a_deep_chain(backend) -> None:
    # 5,000 merges deep: every class joins the cluster of all before it (recursion would fail)
    m = 5000
    z = np.column_stack([np.arange(m - 1), np.r_[0, np.arange(m, 2 * m - 2)], np.arange(1, m), np.arange(2, m + 1)])
    z[0, :2] = [0, 1]
    z[1:, 0] = np.arange(2, m)
    np.testing.assert_array_equal(backend.leaf_order(z[:, :2]), leaves_list(z.astype(np.float64)))


@BACKENDS
def test_leaf_order_with_keys_puts_the_child_of_smaller_mean_key_first(backend) -> None:
    _, z = _random_tree(40, 7)
    keys = np.random.default_rng(8).permutation(40).astype(np.float64)
    root = to_tree(z)

    def visit(node: object) -> list[int]:  # reference: recursive, on scipy's tree
        if node.is_leaf():  # type: ignore[attr-defined]
            return [node.id]  # type: ignore[attr-defined]
        left, right = node.get_left(), node.get_right()  # type: ignore[attr-defined]
        if keys[left.pre_order()].mean() > keys[right.pre_order()].mean():
            left, right = right, left
        return visit(left) + visit(right)

    np.testing.assert_array_equal(backend.leaf_order(z[:, :2], keys), visit(root))


@BACKENDS
def test_merge_ranges_and_cross_sums_against_scipys_tree(backend) -> None:
    sim, z = _random_tree(90, 9)
    order = leaves_list(z)
    start, split, end = backend.merge_ranges(z[:, :2], order)
    cross = backend.merge_cross_sums(sim, order, (start, split, end))
    nodes = to_tree(z, rd=True)[1]
    for r in range(89):
        a = nodes[int(z[r, 0])].pre_order()
        b = nodes[int(z[r, 1])].pre_order()
        first, second = (a, b) if order.tolist().index(a[0]) < order.tolist().index(b[0]) else (b, a)
        assert sorted(order[start[r] : split[r]].tolist()) == sorted(first)
        assert sorted(order[split[r] : end[r]].tolist()) == sorted(second)
        assert cross[r] == pytest.approx(sim[np.ix_(a, b)].sum(), rel=1e-12, abs=1e-12)


@BACKENDS
def test_cluster_rows_as_indicator_products(backend) -> None:
    rng = np.random.default_rng(10)
    mat = rng.standard_normal((70, 70))
    labels = rng.integers(0, 6, 70)
    indicator = np.eye(6)[labels].T  # (6, 70)
    rows, block = backend.cluster_rows(mat, labels, 6)
    np.testing.assert_allclose(rows, indicator @ mat, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(block, indicator @ mat @ indicator.T, rtol=1e-12, atol=1e-12)


@BACKENDS
def test_aggregate_blocks_as_indicator_products(backend) -> None:
    rng = np.random.default_rng(13)
    block = rng.standard_normal((90, 90))
    parent = rng.integers(0, 7, 90)
    parent[:7] = np.arange(7)
    indicator = np.eye(7)[parent]  # (90, 7)
    got = backend.aggregate_blocks(block, parent, 7)
    np.testing.assert_allclose(got, indicator.T @ block @ indicator, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
def test_summaries_of_many_groups_from_the_fine_sums(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 groups aggregated from 400 fine clusters: cohesion and nearest group against numpy on the matrix
    monkeypatch.setattr(_kernels, "ENABLED", compiled)
    rng = np.random.default_rng(14)
    sub = np.repeat(np.arange(100), 6)
    x = 1.5 * rng.standard_normal((400, 100))[:, sub] + rng.standard_normal((400, 600))
    sim = np.corrcoef(x, rowvar=False)
    res = analyze(sim, n_groups=100, find_failed=False)
    for g in res.summary[::9]:
        idx = np.asarray(g.members)
        inner = sim[np.ix_(idx, idx)]
        assert g.cohesion == pytest.approx((inner.sum() - np.trace(inner)) / (len(idx) * (len(idx) - 1)), rel=1e-9)
        means = [
            sim[np.ix_(idx, np.nonzero(res.groups == h)[0])].mean() if h != g.group else -np.inf for h in range(100)
        ]
        assert g.nearest == int(np.argmax(means))
        assert g.nearest_similarity == pytest.approx(max(means), rel=1e-9)


@BACKENDS
def test_seed_pick_is_searchsorted_of_the_cumulative_sum(backend) -> None:
    rng = np.random.default_rng(11)
    nearest = rng.random((5, 300)).astype(np.float32) ** 3
    nearest[2] = 0.0  # every row on a centre: no draw possible
    nearest[3, :-1] = 0.0  # all the mass on the last row
    active = np.array([0, 2, 3, 4])
    draws = rng.random(4)
    expected = []
    for r, u in zip(active, draws):
        cum = np.cumsum(nearest[r])
        expected.append(-1 if cum[-1] <= 0 else min(int(np.searchsorted(cum, u * cum[-1], side="right")), 299))
    assert expected[1:3] == [-1, 299]
    assert backend.seed_pick(nearest, active, draws).tolist() == expected


def _textbook_plus_plus(x: np.ndarray, runs: list[int], seed: int) -> np.ndarray:
    """k-means++ run by run with float64 distances, drawing from the generator in the order the package does: step
    ``j`` draws one uniform for every run with more than ``j`` centres, then one integer for each of those whose
    rows all coincide with its centres so far."""
    rng = np.random.default_rng(seed)
    x64 = x.astype(np.float64)
    picks = [[int(p)] for p in rng.integers(0, x.shape[0], len(runs))]
    nearest = [((x64 - x64[p[0]]) ** 2).sum(axis=1) for p in picks]
    for j in range(1, max(runs)):
        active = [r for r, c in enumerate(runs) if c > j]
        cums = [np.cumsum(nearest[r]) for r in active]
        chosen = [int(np.searchsorted(cum, u * cum[-1], side="right")) for cum, u in zip(cums, rng.random(len(active)))]
        flat = [i for i, cum in enumerate(cums) if cum[-1] <= 0]
        for i, p in zip(flat, rng.integers(0, x.shape[0], len(flat))):
            chosen[i] = int(p)
        for r, p in zip(active, chosen):
            picks[r].append(p)
            nearest[r] = np.minimum(nearest[r], ((x64 - x64[p]) ** 2).sum(axis=1))
    return np.concatenate([x[p] for p in picks])


@pytest.mark.parametrize("compiled", [True, False])
def test_plus_plus_seeds_as_textbook_kmeans_plus_plus(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_classim.structure._failed import plus_plus_seeds as _plus_plus_seeds

    monkeypatch.setattr(_kernels, "ENABLED", compiled)
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((400, 6)) + 4 * rng.integers(0, 5, (400, 1))).astype(np.float32)
    runs = [2, 2, 3, 3, 5, 5, 9, 9]
    got = _plus_plus_seeds(x, np.einsum("ij,ij->i", x, x), runs, np.random.default_rng(3))
    np.testing.assert_array_equal(got, _textbook_plus_plus(x, runs, 3))


@pytest.mark.parametrize("compiled", [True, False])
def test_plus_plus_seeds_when_all_rows_coincide_with_centres(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # two distinct rows (exact distances): after one centre of each every distance is 0, and each next centre is a
    # uniform row drawn from the generator; 6 such draws, each landing in one half or the other
    from lightning_classim.structure._failed import plus_plus_seeds as _plus_plus_seeds

    monkeypatch.setattr(_kernels, "ENABLED", compiled)
    x = np.repeat(np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32), 25, axis=0)
    runs = [4, 6, 2]
    got = _plus_plus_seeds(x, np.einsum("ij,ij->i", x, x), runs, np.random.default_rng(5))
    np.testing.assert_array_equal(got, _textbook_plus_plus(x, runs, 5))


def test_environment_variable_turns_the_kernel_off() -> None:
    code = "from lightning_classim.structure import _kernels, _reference; print(_kernels.ENABLED, _kernels.available())"
    env = {**os.environ, "LIGHTNING_CLASSIM_NUMBA": "0"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env["LIGHTNING_CLASSIM_NUMBA"] = "1"
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert (off.stdout.split(), on.stdout.split()) == (["False", "False"], ["True", "True"])


def _longest_stall(run: Callable[[], object]) -> tuple[float, float]:
    """Longest pause of a Python loop on this thread while ``run`` works on another; and how long ``run`` took."""
    finished = threading.Event()
    took = [0.0]

    def work() -> None:
        t0 = time.perf_counter()
        run()
        took[0] = time.perf_counter() - t0
        finished.set()

    thread = threading.Thread(target=work)
    longest = 0.0
    last = time.perf_counter()
    thread.start()
    while not finished.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    thread.join()
    return longest, took[0]


def test_the_kernel_lets_other_threads_run() -> None:
    # scipy's linkage holds the GIL: a Python loop on another thread stops until it returns. The kernel releases
    # it, so the loop goes on (the training thread, when the callback analyses on a worker thread).
    y = squareform(1 - _planted_similarity(3000, 30), checks=False)
    _kernels.nn_chain_linkage(squareform(y[:3]), "complete")  # compiled or loaded from the cache beforehand
    square = squareform(y)
    stall, took = _longest_stall(lambda: _kernels.nn_chain_linkage(square, "complete"))
    assert stall < took / 3, f"the loop stopped for {stall:.3f} s of the linkage's {took:.3f} s"


def _residual_pairs_reference(sim, labels, block_mean, cut):
    i, j = np.triu_indices(sim.shape[0], 1)
    res = sim[i, j] - block_mean[labels[i], labels[j]]
    cross = labels[i] != labels[j]
    keep = cross & (res >= cut)
    top = res[keep].max() if keep.any() else -np.inf
    return i[keep], j[keep], res[keep], top


@pytest.mark.parametrize("compiled", [True, False])
def test_residual_pairs_as_numpy(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_classim.structure._backend import ops

    monkeypatch.setattr(_kernels, "ENABLED", compiled)
    monkeypatch.setattr("lightning_classim.structure._reference._ROWS_CHUNK", 64)  # several chunks without the kernels
    _residual_pairs = ops().residual_pairs
    rng = np.random.default_rng(5)
    sim = rng.uniform(-1, 1, (300, 300))
    sim = (sim + sim.T) / 2
    labels = rng.integers(0, 7, 300)
    block_mean = rng.uniform(-0.2, 0.2, (7, 7))
    block_mean = (block_mean + block_mean.T) / 2
    i, j, res, top = _residual_pairs_reference(sim, labels, block_mean, 0.7)
    assert 100 < i.shape[0] < 10_000
    rows, cols, vals, count, got_top = _residual_pairs(sim, labels, block_mean, 0.7, 10**6)
    np.testing.assert_array_equal(rows, i)
    np.testing.assert_array_equal(cols, j)
    np.testing.assert_allclose(vals, res, rtol=0, atol=1e-15)
    assert (count, got_top) == (i.shape[0], pytest.approx(top, abs=1e-15))
    # over the cap: the first `cap` pairs row by row, and the count of all of them
    rows, cols, vals, count, _ = _residual_pairs(sim, labels, block_mean, 0.7, 50)
    np.testing.assert_array_equal(rows, i[:50])
    np.testing.assert_array_equal(cols, j[:50])
    assert count == i.shape[0]
    # one group: no pair in different groups
    rows, _, _, count, got_top = _residual_pairs(sim, np.zeros(300, dtype=np.intp), np.zeros((1, 1)), 0.0, 10)
    assert (rows.shape[0], count, got_top) == (0, 0, -np.inf)
