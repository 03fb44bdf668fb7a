"""The failed-group search: mutually similar classes that the tree scatters over several groups (paper, 3.2).

The *residual* of a pair of classes is their similarity minus the mean similarity of their two groups: what the flat
groups do not explain. The pairs in different groups whose residual stands out from the noise form a sparse graph;
its connected components and the fuzzy clusters of fuzzy c-means on its rows are the candidates; a set counts when
its mean residual stands out from the noise of a mean over all the sets of its size (:func:`set_threshold`, see
:func:`failed_groups`). :func:`join_singletons` keeps the classes that the tree leaves alone in sight, and
:func:`merge_failed` chooses among the sets found at one or more cuts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from lightning_classim.structure._backend import ops
from lightning_classim.structure._result import FailedGroup

__all__ = ["failed_groups", "join_singletons", "merge_failed", "set_threshold"]

#: Numbers of fuzzy clusters tried for failed groups.
FCM_CLUSTERS = (2, 3, 5, 9, 17)
#: Seeded restarts of fuzzy c-means per number of clusters (the best objective is kept).
FCM_RESTARTS = 2
#: Dimension of the residual graph's dominant subspace in which fuzzy c-means clusters its rows.
SKETCH_DIM = 48
#: Pairs of classes whose residual spread is estimated from: all of them up to this many, else a sample.
SPREAD_SAMPLE = 1 << 12
#: The search keeps at most this many residual pairs per class (the highest, when more stand out).
PAIRS_PER_CLASS = 32
#: Fuzzy c-means stops when no membership moves more than this (memberships are thresholded at about 0.3).
FCM_TOL = 1e-3
#: The noise edge of the residual rows' spectrum: a drop of the squared singular values by this factor or more ...
GAP_RATIO = 2.5
#: ... among the directions at least this many times the median one.
NOISE_FACTOR = 3.0


def _membership_weights(u: np.ndarray, out: np.ndarray) -> None:
    """``u ** 1.5`` (the fuzzifier) into ``out``, as ``u * sqrt(u)``: ``pow`` is several times slower."""
    np.sqrt(u, out=out)
    out *= u


def _orthonormal_basis(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column span of a tall ``y`` (directions with a negligible singular value dropped).

    From the eigenvectors of the small Gram matrix ``y^T y``: much cheaper than a QR factorisation of ``y``.
    """
    y64 = y.astype(np.float64)
    evals, evecs = np.linalg.eigh(y64.T @ y64)
    keep = evals > evals[-1] * 1e-10 if evals[-1] > 0 else np.zeros(evals.shape, dtype=bool)
    return y64 @ (evecs[:, keep] / np.sqrt(evals[keep]))


def fcm_sizes(n: int) -> list[int]:
    """Numbers of fuzzy clusters tried on ``n`` rows: those of ``FCM_CLUSTERS`` up to ``n // 2`` (maybe none).

    Roughly doubling, so that one of them has about one cluster per failed group plus one for the rest, whatever the
    number of failed groups (up to 16).
    """
    return [c for c in FCM_CLUSTERS if c <= n // 2]


def plus_plus_seeds(x: np.ndarray, sq_rows: np.ndarray, runs: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """``c`` rows of ``x`` chosen k-means++ style for each ``c`` in ``runs``, all runs at once (centres stacked).

    Each next centre of a run is a row drawn with probability proportional to its squared distance to the nearest
    centre the run has so far (random memberships would start every centre at the mean of all rows, a fixed point of
    fuzzy c-means in many dimensions). Step ``j`` draws the ``j``-th centre of every run that has one: one matrix
    product per step instead of one per centre; the steps between the products are the backend's ``seed_update``
    and ``seed_pick``.
    """
    m = x.shape[0]
    sizes = np.asarray(runs)
    picks = np.zeros((len(runs), int(sizes.max())), dtype=np.intp)
    picks[:, 0] = rng.integers(0, m, len(runs))
    nearest = np.empty((len(runs), m), dtype=x.dtype)
    ops().seed_update(nearest, np.arange(len(runs)), x[picks[:, 0]] @ x.T, sq_rows, picks[:, 0], True)
    for j in range(1, picks.shape[1]):
        running = np.nonzero(sizes > j)[0]
        chosen = ops().seed_pick(nearest, running, rng.random(running.shape[0]))
        flat = chosen < 0
        if flat.any():  # all rows coincide with the centres so far
            chosen[flat] = rng.integers(0, m, int(flat.sum()))
        picks[running, j] = chosen
        if j + 1 < picks.shape[1]:
            ops().seed_update(nearest, running, x[chosen] @ x.T, sq_rows, chosen, False)
    return np.concatenate([x[picks[r, :c]] for r, c in enumerate(runs)])


def fuzzy_cmeans(
    x: np.ndarray, sizes: Sequence[int], seed: int, restarts: int | None = None, iters: int = 60
) -> list[np.ndarray]:
    """Fuzzy c-means memberships (m x c) of the rows of x for each ``c`` in ``sizes``, with fuzzifier 1.5.

    Each is the best of a few seeded restarts (lowest objective). Memberships are ``u_ic ∝ d_ic^(-2 / (1.5 - 1))``,
    i.e. ``(1 / d_ic^2)^2``; centres are the means of the rows weighted by ``u^1.5``. All the runs (every ``c``,
    every restart) advance together as column blocks of one ``(m, sum c * restarts)`` problem, in place: one matrix
    product and a few array operations per iteration instead of a Python loop per run.
    """
    restarts = FCM_RESTARTS if restarts is None else restarts
    rng = np.random.default_rng(seed)
    m = x.shape[0]
    dtype = x.dtype
    sq_rows = np.einsum("ij,ij->i", x, x)[:, None]
    runs = [c for c in sizes for _ in range(restarts)]
    block = np.repeat(np.arange(len(runs)), runs)  # run of each column
    onehot = np.zeros((block.shape[0], len(runs)), dtype)
    onehot[np.arange(block.shape[0]), block] = 1.0
    centres = plus_plus_seeds(x, sq_rows[:, 0], runs, rng)
    total = centres.shape[0]
    u = np.empty((m, total), dtype)
    new = np.empty((m, total), dtype)
    w = np.empty((m, total), dtype)
    d2 = np.empty((m, total), dtype)
    ones_m = np.ones(m, dtype)
    for it in range(iters):
        if it:
            _membership_weights(u, w)
            centres = (w.T @ x) / (ones_m @ w)[:, None]
        np.matmul(x, centres.T, out=d2)
        d2 *= -2.0
        d2 += sq_rows
        d2 += np.einsum("ij,ij->i", centres, centres)[None, :]
        np.maximum(d2, 1e-12, out=d2)
        np.reciprocal(d2, out=new)  # at most 1e12, so its square fits float32
        np.multiply(new, new, out=new)  # d^(-2 / (fuzz - 1)) = (1 / d^2)^2 for fuzz = 1.5
        new /= (new @ onehot) @ onehot.T  # normalise within each run
        if it:
            np.subtract(new, u, out=w)
            done = float(np.abs(w, out=w).max()) < FCM_TOL
        else:
            done = False
        u, new = new, u
        if done:
            break
    _membership_weights(u, w)
    objective = (ones_m @ (w * d2)) @ onehot
    out = []
    for i in range(len(sizes)):
        tried = range(i * restarts, (i + 1) * restarts)
        best = min(tried, key=lambda r: (objective[r], r))
        out.append(u[:, block == best].copy())
    return out


def above_the_noise(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` in its principal directions above a clear edge of the noise, or all of ``x`` without one.

    The residual's dense blocks (failed groups) can stand out as a few strong directions above a bulk of noise
    directions; the noise adds about the same distance to every fuzzy centre and so pulls the memberships towards
    the trivial fixed point (all ``1/c``). The edge is the last drop of the squared singular values by a factor
    ``GAP_RATIO`` or more, among the directions at least ``NOISE_FACTOR`` times the median one.
    """
    x64 = x.astype(np.float64)
    evals, evecs = np.linalg.eigh(x64.T @ x64)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    above = evals[:-1] >= NOISE_FACTOR * np.median(evals)
    with np.errstate(divide="ignore", invalid="ignore"):
        edges = np.nonzero(above & (evals[:-1] >= GAP_RATIO * evals[1:]))[0]
    if edges.shape[0] == 0:
        return x
    return (x64 @ evecs[:, : edges[-1] + 1]).astype(x.dtype)


def cross_residuals(
    sim: np.ndarray, labels: np.ndarray, block_mean: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Residuals ``s_ij - mean_block(g_i, g_j)`` of pairs of classes in different groups.

    All of them up to ``SPREAD_SAMPLE`` pairs of classes, else that many drawn at random (a class, then a class
    outside its group).
    """
    m = sim.shape[0]
    if m * (m - 1) // 2 <= SPREAD_SAMPLE:
        i, j = np.triu_indices(m, 1)
        cross = labels[i] != labels[j]
        i, j = i[cross], j[cross]
    else:
        by_group = np.argsort(labels, kind="stable")
        sizes = np.bincount(labels)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        i = rng.integers(0, m, SPREAD_SAMPLE)
        own = labels[i]
        t = np.floor(rng.random(SPREAD_SAMPLE) * (m - sizes[own])).astype(np.intp)  # a place outside i's group
        t += np.where(t >= starts[own], sizes[own], 0)
        j = by_group[t]
    return sim[i, j] - block_mean[labels[i], labels[j]]


def fuzzy_rows(graph: csr_matrix, seed: int) -> np.ndarray:
    """The rows of the (symmetric) residual graph for fuzzy c-means.

    Dense, or in the graph's dominant ``SKETCH_DIM``-dimensional subspace for more rows (a random sparse sketch,
    orthonormalised: one step of a randomised range finder); then in its directions above a clear noise edge
    (:func:`above_the_noise`). No columns when the sketch of the graph vanishes.
    """
    n = graph.shape[0]
    if n <= SKETCH_DIM:
        rows = graph.toarray().astype(np.float32)
    else:
        rng = np.random.default_rng(seed)
        sketch = csr_matrix(
            (rng.choice(np.array([-1.0, 1.0]), n), (np.arange(n), rng.integers(0, SKETCH_DIM, n))),
            shape=(n, SKETCH_DIM),
        )
        basis = _orthonormal_basis(np.asarray((graph @ sketch).todense()))
        if basis.shape[1] == 0:
            return np.zeros((n, 0), dtype=np.float32)
        rows = np.asarray(graph @ basis, dtype=np.float32)
    return above_the_noise(rows)


def set_threshold(m: int, n: int, independent: int) -> float:
    """The noise level, in robust spreads, that the mean residual of a set of ``n`` of ``m`` classes must reach.

    The universal threshold over all ``C(m, n)`` sets, ``sqrt(2 ln C(m, n))``, for a mean of ``independent``
    residuals: ``sqrt(2 ln C(m, n) / independent)`` (a mean of ``e`` independent residuals has ``1 / sqrt(e)`` of
    their spread). The caller credits a set with at most one independent residual per class and per group it spans,
    and no more than its pairs in different groups: residuals that share a class, or a pair of groups, move together
    (a class's whole row, or a sub-block of a group, can sit high). For one pair (``n = 2``, one residual) it is the
    universal threshold of single pairs, ``sqrt(2 ln P)``; for three of 48 classes in three groups 2.55 (3.75 for
    one pair), for three of 1,000 classes 3.55 (5.12).

    Example:
        >>> round(set_threshold(48, 2, 1), 2), round(set_threshold(48, 3, 3), 2), round(set_threshold(1000, 3, 3), 2)
        (3.75, 2.55, 3.55)
    """
    log_sets = math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1)
    return math.sqrt(2.0 * max(log_sets, 0.0) / max(independent, 1))


def join_singletons(sim: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``labels`` with each class that is alone in its group moved to the group it is most similar to on average.

    The residual of a pair measures it against its two groups; against a group of one class it is zero, so classes
    that the tree leaves alone (often the members of a failed group: pulled out of their own groups, not joined
    together) would be out of the search's sight. Groups of two classes or more stay as they are; the labels are
    numbered anew (``0 .. k' - 1``). Unchanged without such classes, or with nothing but them.

    Example:
        >>> sim = np.array([[1.0, 0.8, 0.1, 0.6], [0.8, 1.0, 0.0, 0.5], [0.1, 0.0, 1.0, 0.2], [0.6, 0.5, 0.2, 1.0]])
        >>> join_singletons(sim, np.array([0, 0, 1, 2])).tolist()
        [0, 0, 0, 0]
    """
    sizes = np.bincount(labels)
    alone = np.nonzero(sizes[labels] == 1)[0]
    if alone.shape[0] == 0 or alone.shape[0] == labels.shape[0]:
        return labels
    k = sizes.shape[0]
    indicator = csr_matrix((np.ones(labels.shape[0]), (np.arange(labels.shape[0]), labels)), shape=(labels.shape[0], k))
    joined = labels.copy()
    for start in range(0, alone.shape[0], 1024):  # (1024, m) rows of the matrix at a time
        rows = alone[start : start + 1024]
        means = np.asarray((indicator.T @ sim[rows].T).T) / sizes
        means[:, sizes < 2] = -np.inf
        joined[rows] = np.argmax(means, axis=1)
    return np.unique(joined, return_inverse=True)[1].astype(labels.dtype, copy=False)


def failed_groups(
    sim: np.ndarray,
    labels: np.ndarray,
    blocks: tuple[np.ndarray, np.ndarray, np.ndarray],
    cohesion: float,
    background: float,
    ratio: float,
    membership: float,
    seed: int,
    split: Sequence[frozenset[int]] = (),
) -> list[tuple[FailedGroup, float]]:
    """Mutually similar classes that the tree scatters over several groups, each with its mean residual.

    The residual of a pair of classes is their similarity minus the mean similarity of their two groups: what the
    flat groups do not explain; its noise is the residuals' robust spread, ``1.4826`` times their median absolute
    deviation. The pairs in different groups whose residual reaches ``cut`` (the larger of ``floor``, half the way
    from ``background`` to the failed-group threshold, and the spread times :func:`set_threshold` for three classes
    in three groups) form a sparse graph on the classes they touch. Candidates are its connected components and the
    fuzzy clusters (membership above ``membership``) of fuzzy c-means (``c`` in 2, 3, 5, 9, 17, up to half the
    classes touched) on the graph's rows (:func:`fuzzy_rows`). Each candidate sheds, weakest first, the members whose
    mean residual to the others is under the set's threshold. It is a failed group when its members span two groups
    or more, no group holds more than 3/4 of them, the mean similarity of members in *different* groups is at least
    ``ratio`` of the way from the mean between-group similarity (``background``) to the mean within-group similarity
    (``cohesion``), and their mean residual at least the larger of ``floor`` and the spread times
    :func:`set_threshold` for its size and spread: measured from the background, so that a matrix with a high
    similarity everywhere does not make every large set a failed group, and above the noise of a mean over all the
    sets of that size, so that chance pairs do not make one either. A set inside one of ``split`` (the classes of a
    split group's two sub-blocks) is left to the split group. :func:`merge_failed` chooses which to report.
    """
    m = sim.shape[0]
    sums, sizes, _ = blocks
    k = sizes.shape[0]
    if k < 2 or m < 6 or not math.isfinite(cohesion) or not cohesion > background:
        return []
    block_mean = sums / np.outer(sizes, sizes)
    threshold = background + ratio * (cohesion - background)
    rng = np.random.default_rng(seed)
    sample = cross_residuals(sim, labels, block_mean, rng)
    noise = 1.4826 * float(np.median(np.abs(sample - np.median(sample)))) if sample.shape[0] else 0.0
    floor = (threshold - background) / 2

    def set_cut(n: int, spanned: int, pairs: int) -> float:
        """The mean residual a set of ``n`` classes in ``spanned`` groups, ``pairs`` of them across, must reach."""
        return max(floor, noise * set_threshold(m, n, min(n, spanned, pairs)))

    cut = set_cut(3, 3, 3)
    cap = PAIRS_PER_CLASS * m
    rows, cols, vals, count, top = ops().residual_pairs(sim, labels, block_mean, cut, cap)
    first = True
    while count > cap:  # more pairs stand out than the graph keeps: raise the cut (a guess from the sample first)
        above = float(np.mean(sample >= cut))
        guess = float(np.quantile(sample, 1.0 - above * cap / (2 * count))) if first and above > 0 else cut
        # halfway to the largest; past it when all the pairs left tie there (then none is kept)
        cut = guess if guess > cut else (cut + top) / 2 if top > cut else float(np.nextafter(top, np.inf))
        first = False
        rows, cols, vals, count, top = ops().residual_pairs(sim, labels, block_mean, cut, cap)
    active = np.unique(np.concatenate([rows, cols]))
    n = active.shape[0]
    if n < 3:
        return []
    place = np.zeros(m, dtype=np.intp)
    place[active] = np.arange(n)
    graph = csr_matrix((np.concatenate([vals, vals]), (place[np.r_[rows, cols]], place[np.r_[cols, rows]])), (n, n))
    n_parts, part = connected_components(graph, directed=False)
    candidates = [active[part == p] for p in range(n_parts)]
    rows_fcm = fuzzy_rows(graph, seed) if fcm_sizes(n) else None
    if rows_fcm is not None and rows_fcm.shape[1]:
        for u in fuzzy_cmeans(rows_fcm, fcm_sizes(n), seed):
            candidates.extend(active[u[:, j] >= membership] for j in range(u.shape[1]))
    largest = min(max(m // 2, 3), 4000)

    def trimmed(members: np.ndarray) -> np.ndarray:
        """The members without those, weakest first, whose mean residual to the others is below the set's cut."""
        lab = labels[members]
        across = lab[:, None] != lab[None, :]
        resid = np.where(across, sim[np.ix_(members, members)] - block_mean[lab[:, None], lab[None, :]], 0.0)
        row, count = resid.sum(axis=1), across.sum(axis=1)
        keep = np.ones(len(members), dtype=bool)
        while keep.sum() >= 3:
            need = set_cut(int(keep.sum()), np.unique(lab[keep]).shape[0], int(count[keep].sum()) // 2)
            strength = np.where(keep & (count > 0), row / np.maximum(count, 1), np.inf)
            strength[keep & (count == 0)] = -np.inf  # no kept member outside its group
            worst = int(np.argmin(strength))
            if strength[worst] >= need:
                break
            keep[worst] = False
            row -= resid[:, worst]
            count -= across[:, worst]
        return members[keep]

    def accept(members: np.ndarray) -> tuple[FailedGroup, float] | None:
        if len(members) < 3 or len(members) > largest:
            return None
        members = trimmed(members)
        n = len(members)
        if n < 3 or any(set(members.tolist()) <= union for union in split):
            return None
        spread = np.bincount(labels[members], minlength=k)
        if np.count_nonzero(spread) < 2 or spread.max() > 0.75 * n:
            return None
        lab = labels[members]
        across = lab[:, None] != lab[None, :]
        mean_across = float(sim[np.ix_(members, members)][across].mean())
        residual = mean_across - float(block_mean[lab[:, None], lab[None, :]][across].mean())
        if mean_across < threshold or residual < set_cut(n, int(np.count_nonzero(spread)), int(across.sum()) // 2):
            return None
        groups = tuple(int(g) for g in np.nonzero(spread)[0])
        return FailedGroup(members=tuple(members.tolist()), groups=groups, similarity=mean_across), residual

    out: dict[tuple[int, ...], tuple[FailedGroup, float]] = {}
    for members in candidates:
        found = accept(members)
        if found is not None:
            out[found[0].members] = found
    return list(out.values())


def merge_failed(
    sim: np.ndarray, labels: np.ndarray, found: Sequence[tuple[FailedGroup, float]], limit: int
) -> tuple[FailedGroup, ...]:
    """The failed groups to report, of those found (with their mean residual) at one or more cuts of one tree.

    A set that holds another with over twice its mean residual gives way (two or more failed groups joined dilute
    it); then a set gives way to another that holds it with at least half its mean residual. Each kept set's
    ``groups`` and ``similarity`` are those of its members in ``labels`` (the finest of the cuts); the most similar
    first, at most ``limit``.
    """
    strength: dict[tuple[int, ...], float] = {}
    for f, residual in found:
        strength[f.members] = max(residual, strength.get(f.members, -math.inf))
    sets = {key: set(key) for key in strength}
    # first the sets that dilute a set they hold (two failed groups joined), then the parts of the sets left
    whole = {a for a in sets if not any(other < sets[a] and strength[a] < strength[b] / 2 for b, other in sets.items())}
    kept = {a for a in whole if not any(sets[a] < sets[b] and strength[b] >= strength[a] / 2 for b in whole)}
    out = []
    for key in kept:
        members = np.asarray(key)
        lab = labels[members]
        across = lab[:, None] != lab[None, :]
        out.append(FailedGroup(members=key, groups=tuple(int(g) for g in np.unique(lab)),
                               similarity=float(sim[np.ix_(members, members)][across].mean())))  # fmt: skip
    return tuple(sorted(out, key=lambda f: (-f.similarity, f.members))[:limit])
