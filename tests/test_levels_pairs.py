"""Levels (nested cuts) and pairs worth a look, against scipy, sklearn and numpy on hand-made matrices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score, silhouette_score

from lightning_classim import Level, StructureOptions, analyze
from lightning_classim.structure import _kernels, _reference
from lightning_classim.structure._levels import level_cuts, primary_level
from lightning_classim.structure._result import StructureResult


def nested_matrix(
    sup: int = 3, sub: int = 3, per: int = 4, within_sub: float = 0.9, within_sup: float = 0.6, between: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block matrix of superclasses of subclasses with exact values and tiny noise, classes shuffled."""
    m = sup * sub * per
    top = np.repeat(np.arange(sup), sub * per)
    mid = np.repeat(np.arange(sup * sub), per)
    sim = np.where(
        mid[:, None] == mid[None, :], within_sub, np.where(top[:, None] == top[None, :], within_sup, between)
    )
    noise = 0.01 * np.random.default_rng(0).standard_normal((m, m))
    sim = sim + np.triu(noise, 1) + np.triu(noise, 1).T
    np.fill_diagonal(sim, 1.0)
    perm = np.random.default_rng(1).permutation(m)
    return sim[np.ix_(perm, perm)], top[perm], mid[perm]


def scipy_tree(sim: np.ndarray) -> np.ndarray:
    dist = 1 - sim
    np.fill_diagonal(dist, 0)
    return linkage(squareform(dist, checks=False), "complete")


def scores_of_cuts(z: np.ndarray, kmax: int) -> dict[int, float]:
    """The documented level score from scipy's merge heights: a cut's range of heights over its neighbours' median."""
    heights = np.sort(z[:, 2])[::-1]
    width = {k: heights[k - 2] - heights[k - 1] for k in range(2, kmax + 1)}
    out = {}
    for k in width:
        around = [width[c] for c in width if max(2, k // 2) <= c <= min(kmax, 2 * k) and c != k]
        out[k] = width[k] / max(float(np.median(around)), 1e-12 * (heights[0] - heights[kmax - 1]))
    return out


def test_two_nested_levels_of_a_hand_made_matrix_as_scipy_cuts_them():
    sim, top, mid = nested_matrix()
    res = analyze(sim)
    z = scipy_tree(sim)
    assert [level.n_groups for level in res.levels] == [3, 9]
    assert all(level.distinct for level in res.levels)
    dist = 1 - sim
    np.fill_diagonal(dist, 0)
    for level, truth in zip(res.levels, (top, mid)):
        assert adjusted_rand_score(truth, level.groups) == 1.0
        assert adjusted_rand_score(fcluster(z, level.n_groups, "maxclust"), level.groups) == 1.0
        # the level's height is inside the range that gives exactly its groups
        assert adjusted_rand_score(fcluster(z, level.height, "distance"), level.groups) == 1.0
        assert level.silhouette == pytest.approx(silhouette_score(dist, level.groups, metric="precomputed"), abs=1e-9)
        assert [g.size for g in level.summary] == np.bincount(level.groups).tolist()
    # the fine level nests in the coarse one: each fine group lies inside one coarse group
    coarse, fine = res.levels
    assert all(len(set(coarse.groups[fine.groups == g])) == 1 for g in range(9))
    # the primary cut is the level that stands out more; the scalars say what the levels are
    scores = scores_of_cuts(z, min(36 // 2, 4 * 30))
    assert coarse.score == pytest.approx(scores[3]) and fine.score == pytest.approx(scores[9])
    assert res.n_groups == max((3, 9), key=scores.get)
    assert res.metrics["n_levels"] == 2.0
    assert res.metrics["level1/n_groups"] == 3.0 and res.metrics["level2/n_groups"] == 9.0
    assert res.metrics["level1/silhouette"] == pytest.approx(coarse.silhouette)


def test_levels_in_the_table_summary_json_and_back():
    sim, _, _ = nested_matrix()
    names = [f"class {i}" for i in range(sim.shape[0])]
    res = analyze(sim, class_names=names)
    text = res.summary_markdown()
    assert "Levels: 3 groups > 9 groups" in text
    # every fine group is listed under its coarse group, with its members' names
    coarse, fine = res.levels
    for g in range(fine.n_groups):
        first = names[int(np.nonzero(fine.groups == g)[0][0])]
        assert first in text
    data = json.loads(json.dumps(res.to_dict()))
    assert [level["n_groups"] for level in data["levels"]] == [3, 9]
    back = StructureResult.from_parts(res.arrays(), data, names)
    assert [level.n_groups for level in back.levels] == [3, 9]
    np.testing.assert_array_equal(back.levels[1].groups, fine.groups)
    assert back.levels[0].distinct and back.levels[0].score == pytest.approx(coarse.score)


def test_reading_levels_of_a_smoothly_decaying_tree_follow_the_documented_rule():
    # low-rank scores without planted blocks: no gap stands out; the reading levels are the two highest peaks of the
    # score among the cuts into 2..max_groups groups (a peak: higher than every cut within a factor of 1.5 in k)
    rng = np.random.default_rng(0)
    m = 300
    x = rng.standard_normal((2000, 12)) @ rng.standard_normal((12, m)) + 2.0 * rng.standard_normal((2000, m))
    sim = np.corrcoef(x, rowvar=False)
    res = analyze(sim, find_failed=False)
    z = scipy_tree(sim)
    scores = {k: v for k, v in scores_of_cuts(z, min(m // 2, 4 * 30)).items() if k <= 30}
    peaks = [k for k in scores if scores[k] >= 2 and all(scores[k] > scores[c] for c in scores
                                                         if c != k and k / 1.5 <= c <= k * 1.5)]  # fmt: skip
    expected = sorted(sorted(peaks, key=scores.get)[-2:])
    assert len(expected) == 2 and not any(level.distinct for level in res.levels)
    assert [level.n_groups for level in res.levels] == expected
    for level in res.levels:
        assert adjusted_rand_score(fcluster(z, level.n_groups, "maxclust"), level.groups) == 1.0
        assert level.score == pytest.approx(scores[level.n_groups])
    assert res.n_groups == expected[1]  # without a distinct level, the fine reading level is the primary cut
    old = analyze(sim, find_failed=False, primary="silhouette")
    assert old.n_groups == max(old.silhouettes, key=old.silhouettes.get)


def test_noise_has_no_distinct_level():
    rng = np.random.default_rng(11)
    for m in (60, 200):
        sim = np.corrcoef(rng.standard_normal((3000, m)), rowvar=False)
        res = analyze(sim, find_failed=False)
        assert not any(level.distinct for level in res.levels)
        assert all(level.silhouette < 0.1 for level in res.levels)
        if res.levels:  # reading levels of noise say that they are weak
            assert "No level stands out and every silhouette is below 0.1: the blocks are weak." in res.levels_line()


def test_levels_with_a_fixed_cut_and_a_cap():
    sim, top, _ = nested_matrix()
    fixed = analyze(sim, n_groups=5)
    assert fixed.n_groups == 5 and [level.n_groups for level in fixed.levels] == [3, 9]
    capped = analyze(sim, max_groups=4)  # the fine level has more groups than allowed: the coarse one is primary
    assert capped.n_groups == 3 and adjusted_rand_score(top, capped.groups) == 1.0


def test_primary_option_is_checked():
    with pytest.raises(ValueError, match=r"`primary` to be one of \['level', 'silhouette'\], but got 'best'"):
        StructureOptions(primary="best")


def test_a_tree_too_small_for_levels():
    assert analyze(np.eye(3)).levels == ()
    assert analyze(np.array([[1.0, 0.5], [0.5, 1.0]])).levels == ()


# ---------------------------------------------------------------- pairs


def pair_keys(res, kind):
    return [(p.a, p.b) for p in res.pairs if p.kind == kind]


def test_a_planted_near_duplicate_is_found_with_its_ratio():
    sim, _, mid = nested_matrix()
    a, b = np.nonzero(mid == 4)[0][:2]
    sim[a, b] = sim[b, a] = 0.99
    names = [f"c{i}" for i in range(sim.shape[0])]
    res = analyze(sim, class_names=names)
    found = [p for p in res.pairs if p.kind == "near_duplicate"]
    assert [(p.i, p.j) for p in found] == [(min(a, b), max(a, b))]
    pair = found[0]
    assert (pair.a, pair.b) == (names[pair.i], names[pair.j]) and pair.similarity == pytest.approx(0.99)
    others = sim.copy()
    np.fill_diagonal(others, -np.inf)
    others[a, b] = others[b, a] = -np.inf
    next_nearest = max(others[a].max(), others[b].max())
    assert pair.score == pytest.approx((1 - next_nearest) / (1 - 0.99))
    assert res.metrics["pairs/near_duplicate"] == 1.0
    clean = analyze(nested_matrix()[0])
    assert pair_keys(clean, "near_duplicate") == []


def test_a_planted_outlier_off_the_blocks_is_found_with_its_robust_score():
    sim, top, _ = nested_matrix()
    a = int(np.nonzero(top == 0)[0][0])
    b = int(np.nonzero(top == 2)[0][0])
    sim[a, b] = sim[b, a] = 0.6
    res = analyze(sim, n_groups=3)
    found = [p for p in res.pairs if p.kind == "outlier"]
    assert [(p.i, p.j) for p in found] == [(min(a, b), max(a, b))]
    # the score: the residual over 1.4826 times the median absolute deviation of all cross-group residuals (numpy)
    labels = res.groups
    means = np.array([[sim[np.ix_(labels == g, labels == h)].mean() for h in range(3)] for g in range(3)])
    i, j = np.triu_indices(sim.shape[0], 1)
    cross = labels[i] != labels[j]
    residuals = sim[i[cross], j[cross]] - means[labels[i[cross]], labels[j[cross]]]
    spread = 1.4826 * np.median(np.abs(residuals - np.median(residuals)))
    assert found[0].score == pytest.approx((0.6 - means[labels[a], labels[b]]) / spread)
    assert found[0].score >= math.sqrt(2 * math.log(i.size))


def test_a_cross_group_pair_that_is_not_alike_is_not_an_outlier():
    # between-group similarity -0.5 and one pair at 0.0: a big residual, but the two classes are not alike
    m = 40
    labels = np.repeat([0, 1], 20)
    sim = np.where(labels[:, None] == labels[None, :], 0.8, -0.5)
    sim = sim + 0.01 * np.random.default_rng(2).standard_normal((m, m))
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    sim[3, 30] = sim[30, 3] = 0.0
    assert pair_keys(analyze(sim, n_groups=2), "outlier") == []


def test_a_hub_class_is_found_and_has_no_partner():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4000, 60))
    x[:, 17] = x[:, :60].sum(axis=1) / 4  # alike to every class a little: a star
    sim = np.corrcoef(x, rowvar=False)
    names = [f"tag{i}" for i in range(60)]
    res = analyze(sim, class_names=names)
    hubs = [p for p in res.pairs if p.kind == "hub"]
    assert [(p.a, p.b, p.i, p.j) for p in hubs] == [("tag17", "", 17, -1)]
    mean_others = (sim[17].sum() - 1) / 59
    assert hubs[0].similarity == pytest.approx(mean_others)
    means = (sim.sum(axis=1) - 1) / 59
    spread = 1.4826 * np.median(np.abs(means - np.median(means)))
    assert hubs[0].score == pytest.approx((mean_others - np.median(means)) / spread)


def test_pairs_in_summary_json_and_the_markdown_table():
    sim, _, mid = nested_matrix()
    a, b = np.nonzero(mid == 4)[0][:2]
    sim[a, b] = sim[b, a] = 0.99
    names = [f"c{i}" for i in range(sim.shape[0])]
    res = analyze(sim, class_names=names)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["pairs"][0]["kind"] == "near_duplicate"
    assert {data["pairs"][0]["a"], data["pairs"][0]["b"]} == {names[a], names[b]}
    text = res.summary_markdown()
    assert "| near duplicate |" in text and names[a] in text


@pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")
@pytest.mark.parametrize("backend", [_kernels, _reference], ids=["compiled", "reference"])
def test_top_two_is_each_rows_two_largest_off_the_diagonal(backend):
    rng = np.random.default_rng(3)
    mat = rng.standard_normal((70, 70))
    mat = (mat + mat.T) / 2
    mat[5, 9] = mat[9, 5] = mat[5, 11] = mat[11, 5] = 10.0  # a tie: the lower column first
    idx, val = backend.top_two(mat)
    off = mat.copy()
    np.fill_diagonal(off, -np.inf)
    expected = np.argsort(-off, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(val, np.take_along_axis(off, expected, axis=1))


def test_report_follows_each_pair_over_the_epochs(tmp_path):
    from lightning_classim.artifacts import write_run_info, write_snapshot
    from lightning_classim.report import pair_history, write_report
    from lightning_classim.runs import load_run

    base, _, mid = nested_matrix()
    names = [f"c{i}" for i in range(base.shape[0])]
    ab = np.nonzero(mid == 4)[0][:2]  # a near duplicate from epoch 1 on
    cd = np.nonzero(mid == 7)[0][:2]  # one in epochs 0 and 1 only
    plants = {0: [cd], 1: [ab, cd], 2: [ab]}
    write_run_info(tmp_path, {"num_classes": base.shape[0]})
    for epoch, pairs in plants.items():
        sim = base.copy()
        for i, j in pairs:
            sim[i, j] = sim[j, i] = 0.99
        write_snapshot(tmp_path, epoch, 10 * epoch, analyze(sim, class_names=names), None)
    history = {(e["a"], e["b"]): e for e in pair_history(load_run(tmp_path))}
    a, b = sorted(names[i] for i in ab)
    c, d = sorted(names[i] for i in cd)
    key_ab = (a, b) if (a, b) in history else (b, a)
    key_cd = (c, d) if (c, d) in history else (d, c)
    assert history[key_ab]["epochs"] == [1, 2] and history[key_ab]["status"] == "persists"
    assert history[key_cd]["epochs"] == [0, 1] and history[key_cd]["status"] == "gone"
    assert next(iter(history)) == key_ab  # the last epoch's pairs first
    folder = write_report(tmp_path, tmp_path / "report")
    md = (folder / "report.md").read_text()
    assert f"| near duplicate | {key_ab[0]} | {key_ab[1]} | persists | 1 | 2 | 2 |" in md
    assert f"| near duplicate | {key_cd[0]} | {key_cd[1]} | gone | 0 | 1 | 2 |" in md
    assert json.loads((folder / "pairs.json").read_text())[0]["status"] == "persists"
    # a pair found only in the last epoch is new; one found again after a gap persists
    ef = np.nonzero(mid == 1)[0][:2]
    sim = base.copy()
    for i, j in (ab, cd, ef):
        sim[i, j] = sim[j, i] = 0.99
    write_snapshot(tmp_path, 3, 30, analyze(sim, class_names=names), None)
    again = {frozenset((e["a"], e["b"])): e["status"] for e in pair_history(load_run(tmp_path))}
    assert again[frozenset(key_ab)] == again[frozenset(key_cd)] == "persists"
    assert again[frozenset(names[i] for i in ef)] == "new"


def test_the_coarse_level_searched_for_split_and_failed_groups():
    from lightning_classim.structure._levels import searched_coarse as _searched_coarse

    def level(n, silhouette, distinct):
        return Level(n, np.arange(12) % n, (), silhouette, 0.5, 3.0, distinct)

    assert _searched_coarse((), 8) is None
    assert _searched_coarse((level(4, 0.2, True), level(8, 0.6, False)), 8).n_groups == 4  # distinct
    assert _searched_coarse((level(4, 0.5, False), level(8, 0.6, False)), 8).n_groups == 4  # reasonable structure
    assert _searched_coarse((level(4, 0.49, False), level(8, 0.6, False)), 8) is None  # weak: a loose cut
    assert _searched_coarse((level(4, float("nan"), False),), 8) is None  # not measured
    assert _searched_coarse((level(8, 0.9, True),), 8) is None  # not coarser than the cut
    assert _searched_coarse((level(4, 0.9, True),), 3) is None


def smooth_tree(m: int, bumps: dict[int, float]) -> np.ndarray:
    """A linkage whose cut into k groups keeps over a range of heights 1/k (a smoothly decaying tree), times
    ``bumps[k]``: only its heights matter to the levels."""
    width = {k: bumps.get(k, 1.0) / k for k in range(2, m + 1)}  # H_{k-1} - H_k
    heights = {m - 1: 0.01}
    for k in range(m - 2, 0, -1):
        heights[k] = heights[k + 1] + width[k + 1]
    z = np.zeros((m - 1, 4))
    z[:, 2] = sorted(heights.values())
    return z


@pytest.mark.parametrize(("bump", "levels", "primary"), [(2.5, [2, 4, 9], 4), (1.0, [2, 9], 9)])
def test_the_middle_reading_of_a_smooth_tree_is_the_primary(bump, levels, primary):
    # by hand: the cuts into 2 and 9 groups stand out six and five times from a smooth 1/k decay, the cut into 4 by
    # 2.5 (its score, its range over the median range of the cuts into 2 to 8, is about 3.4): none is distinct (a
    # score of 12), the ends are the two reading levels, and the cut into 4 is the clearest reading between them,
    # so it is a level and the primary grouping. Without its bump there is no reading between the ends.
    found = level_cuts(smooth_tree(40, {2: 6, 4: bump, 9: 5}), 30)
    assert [k for k, *_ in found] == levels and not any(distinct for *_, distinct in found)
    assert primary_level(found, 30) == primary


def test_up_to_30_classes_two_readable_cuts_where_the_tree_has_them():
    # the cut into 7 stands out by 1.4 only (a score of 1.2, under the reading levels' 2 at 20 classes as at 40,
    # though over the 1 of a cut wider than its two neighbours): read at 20 classes, where the levels are the two or
    # three most readable cuts, not at 40
    small = [k for k, *_ in level_cuts(smooth_tree(20, {3: 3, 7: 1.4}), 30)]
    large = [k for k, *_ in level_cuts(smooth_tree(40, {3: 3, 7: 1.4}), 30)]
    assert small == [3, 7] and large == [3]
    assert [k for k, *_ in level_cuts(smooth_tree(20, {3: 3}), 30)] == [3]  # a smooth tree has no second reading
