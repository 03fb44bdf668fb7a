"""Compiled kernels (numba) of the structure analysis; all of them release the GIL.

:func:`nn_chain_linkage` gives the linkage matrix of :func:`scipy.cluster.hierarchy.linkage` for the methods that
scipy computes with its nearest-neighbour chain (complete, average, weighted, ward), bit for bit: the same scan
order, the same tie rule (the previous element of the chain first, then the lowest index), the same Lance-Williams
formulas evaluated in the same order, the same stable sort by height and the same relabelling. It is faster (2.2-2.9x
at 1,000-4,000 classes, ``benchmarks/bench_structure.py``) because it scans and updates contiguous rows of a square
matrix over a sorted list of the clusters still active, where scipy scans its condensed vector (strided for half of
every row) over all ``m`` slots and calls the update formula through a pointer.

The other kernels are the steps around the linkage, without temporaries of the matrix's size: :func:`max_asymmetry` (the
symmetry and finiteness check), :func:`upper_moments`, :func:`one_minus` (the square distances), :func:`leaf_order`
and :func:`merge_ranges` (no recursion), :func:`merge_cross_sums` (the cophenetic sums over the tree, from the
similarity matrix), :func:`cluster_rows` (sums over groups), :func:`aggregate_blocks` (a cut's sums from a finer
cut's), :func:`nested_silhouettes`, :func:`residual_pairs` (the pairs of the failed-group search, one pass), and
the steps of the k-means++ seeds of the fuzzy c-means between their matrix products (:func:`seed_update`,
:func:`seed_pick`; the products stay with numpy). Releasing the GIL
matters because the callback analyses on a worker thread: scipy's linkage holds the GIL throughout (0.2 s at 4,000
classes, over a second at 10,000), and the training thread stops meanwhile. None of them calls BLAS: numba would
call scipy's OpenBLAS, whose threads then compete with numpy's on the same cores.

They run when numba imports and the environment variable ``LIGHTNING_CLASSIM_NUMBA`` is not ``"0"``
(:data:`ENABLED`); else :mod:`._backend` chooses their numpy reference (:mod:`._reference`), with the same results.
The kernels are compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

#: Whether the compiled kernels are wanted: numba is installed and ``LIGHTNING_CLASSIM_NUMBA`` is not ``"0"``. numba
#: itself is imported on first use (it takes a quarter of a second), so that importing the package stays light.
ENABLED: bool = os.environ.get("LIGHTNING_CLASSIM_NUMBA", "1") != "0" and importlib.util.find_spec("numba") is not None

#: The linkage methods of scipy's nearest-neighbour chain, with the kernel's codes.
NN_CHAIN_METHODS = {"complete": 0, "average": 1, "weighted": 2, "ward": 3}


def _nn_chain(dist: np.ndarray, method: int) -> np.ndarray:  # pragma: no cover - compiled
    """The ``nn_chain`` on a square distance matrix (overwritten); the merges as found, unlabelled."""
    n = dist.shape[0]
    z = np.empty((n - 1, 4))
    size = np.ones(n, dtype=np.int64)
    chain = np.empty(n, dtype=np.int64)
    active = np.arange(n)  # the clusters still active, in increasing order (scipy's scan order)
    n_active = n
    chain_length = 0
    x = 0
    y = 0
    for k in range(n - 1):
        if chain_length == 0:
            chain_length = 1
            chain[0] = active[0]
        while True:  # follow nearest neighbours until two are mutual
            x = chain[chain_length - 1]
            if chain_length > 1:  # prefer the previous element of the chain, so that the chain cannot cycle
                y = chain[chain_length - 2]
                current = dist[x, y]
            else:
                current = np.inf
            row = dist[x]
            for t in range(n_active):
                i = active[t]
                if i != x and row[i] < current:
                    current = row[i]
                    y = i
            if chain_length > 1 and y == chain[chain_length - 2]:
                break
            chain[chain_length] = y
            chain_length += 1
        chain_length -= 2
        if x > y:
            x, y = y, x
        nx = size[x]
        ny = size[y]
        z[k, 0] = x
        z[k, 1] = y
        z[k, 2] = current
        z[k, 3] = nx + ny
        size[x] = 0  # x is dropped, y becomes the merged cluster
        size[y] = nx + ny
        pos = 0
        while active[pos] != x:
            pos += 1
        for t in range(pos, n_active - 1):
            active[t] = active[t + 1]
        n_active -= 1
        row_x = dist[x]
        row_y = dist[y]
        # one loop per method (a branch inside the loop keeps it from being optimised)
        if method == 0:  # complete
            for t in range(n_active):
                i = active[t]
                if i != y:
                    new = row_x[i] if row_x[i] > row_y[i] else row_y[i]
                    row_y[i] = new
                    dist[i, y] = new
        elif method == 1:  # average
            for t in range(n_active):
                i = active[t]
                if i != y:
                    new = (nx * row_x[i] + ny * row_y[i]) / (nx + ny)
                    row_y[i] = new
                    dist[i, y] = new
        elif method == 2:  # weighted
            for t in range(n_active):
                i = active[t]
                if i != y:
                    new = 0.5 * (row_x[i] + row_y[i])
                    row_y[i] = new
                    dist[i, y] = new
        else:  # ward
            for t in range(n_active):
                i = active[t]
                if i != y:
                    ni = size[i]
                    inv = 1.0 / (nx + ny + ni)
                    d_xi = row_x[i]
                    d_yi = row_y[i]
                    new = math.sqrt(
                        (ni + nx) * inv * d_xi * d_xi + (ni + ny) * inv * d_yi * d_yi - ni * inv * current * current
                    )
                    row_y[i] = new
                    dist[i, y] = new
    return z


def _label(z: np.ndarray, n: int) -> None:  # pragma: no cover - compiled
    """The ``label`` of scipy: the cluster ids and sizes of merges sorted by height (union-find), in place."""
    parent = np.arange(2 * n - 1)
    size = np.ones(2 * n - 1)
    roots = np.empty(2, dtype=np.int64)
    for i in range(n - 1):
        for c in range(2):
            leaf = int(z[i, c])
            root = leaf
            while parent[root] != root:
                root = parent[root]
            while parent[leaf] != root:  # path compression
                nxt = parent[leaf]
                parent[leaf] = root
                leaf = nxt
            roots[c] = root
        x, y = roots[0], roots[1]
        z[i, 0] = min(x, y)
        z[i, 1] = max(x, y)
        parent[x] = n + i
        parent[y] = n + i
        size[n + i] = size[x] + size[y]
        z[i, 3] = size[n + i]


def _mirror_upper(out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Copy the upper triangle onto the lower one and zero the diagonal, in 64 x 64 tiles (cache and TLB friendly)."""
    m = out.shape[0]
    tile = 64
    for bi in range(0, m, tile):
        ie = min(bi + tile, m)
        for bj in range(bi + tile, m, tile):
            for j in range(bj, min(bj + tile, m)):
                for i in range(bi, ie):
                    out[j, i] = out[i, j]
        for i in range(bi, ie):
            out[i, i] = 0.0
            for j in range(i + 1, ie):
                out[j, i] = out[i, j]


def _max_asymmetry(mat: np.ndarray) -> float:  # pragma: no cover - compiled
    """Max ``|M - M^T|`` in 64 x 64 tiles; NaN or infinite as soon as an entry is not finite."""
    m = mat.shape[0]
    tile = 64
    worst = 0.0
    for bi in range(0, m, tile):
        ie = min(bi + tile, m)
        for i in range(bi, ie):
            if not math.isfinite(mat[i, i]):
                return mat[i, i] - mat[i, i]
        for bj in range(bi, m, tile):
            je = min(bj + tile, m)
            for j in range(bj, je):
                for i in range(bi, min(ie, j)):
                    diff = abs(mat[i, j] - mat[j, i])
                    if not diff <= worst:
                        worst = diff
                        if not math.isfinite(diff):
                            return diff
    return worst


def _upper_moments(mat: np.ndarray) -> tuple[float, float, float, float, float]:  # pragma: no cover - compiled
    """Mean, sums of squared and cubed deviations from it, maximum and minimum of the upper triangle (two passes).

    Each sum runs in 4 interleaved accumulators, so that the additions do not wait on one another.
    """
    m = mat.shape[0]
    t0 = t1 = t2 = t3 = 0.0
    top = -np.inf
    low = np.inf
    for i in range(m - 1):
        row = mat[i]
        j = i + 1
        while j + 3 < m:
            a, b, c, d = row[j], row[j + 1], row[j + 2], row[j + 3]
            t0 += a
            t1 += b
            t2 += c
            t3 += d
            top = max(top, max(max(a, b), max(c, d)))
            low = min(low, min(min(a, b), min(c, d)))
            j += 4
        while j < m:
            t0 += row[j]
            top = max(top, row[j])
            low = min(low, row[j])
            j += 1
    mean = ((t0 + t1) + (t2 + t3)) / (m * (m - 1) // 2)
    p0 = p1 = p2 = p3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    for i in range(m - 1):
        row = mat[i]
        j = i + 1
        while j + 3 < m:
            a = row[j] - mean
            b = row[j + 1] - mean
            c = row[j + 2] - mean
            d = row[j + 3] - mean
            a2, b2, c2, d2 = a * a, b * b, c * c, d * d
            p0 += a2
            p1 += b2
            p2 += c2
            p3 += d2
            q0 += a2 * a
            q1 += b2 * b
            q2 += c2 * c
            q3 += d2 * d
            j += 4
        while j < m:
            a = row[j] - mean
            a2 = a * a
            p0 += a2
            q0 += a2 * a
            j += 1
    return mean, (p0 + p1) + (p2 + p3), (q0 + q1) + (q2 + q3), top, low


def _cross_sums(
    mat: np.ndarray, order: np.ndarray, start: np.ndarray, split: np.ndarray, end: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """Sum of ``mat`` over the pairs that each merge joins: ``order[start:split]`` with ``order[split:end]``."""
    cross = np.empty(start.shape[0])
    for r in range(start.shape[0]):
        acc = 0.0
        for a in range(start[r], split[r]):
            row = mat[order[a]]
            for b in range(split[r], end[r]):
                acc += row[order[b]]
        cross[r] = acc
    return cross


def _tree_ranges(kids: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Where each merge sits along a leaf order: first child at ``[start, split)``, the other at ``[split, end)``."""
    m = order.shape[0]
    lo = np.empty(2 * m - 1, dtype=np.int64)
    hi = np.empty(2 * m - 1, dtype=np.int64)
    for p in range(m):
        lo[order[p]] = p
        hi[order[p]] = p + 1
    split = np.empty(m - 1, dtype=np.int64)
    for r in range(m - 1):
        a = kids[r, 0]
        b = kids[r, 1]
        if lo[a] > lo[b]:
            a, b = b, a
        lo[m + r] = lo[a]
        split[r] = lo[b]
        hi[m + r] = hi[b]
    return lo[m:].copy(), split, hi[m:].copy()


def _leaves(kids: np.ndarray, keys: np.ndarray, keyed: bool) -> np.ndarray:  # pragma: no cover - compiled
    """Leaf order (first child first, or with ``keyed`` the child of smaller mean key first), without recursion."""
    m = kids.shape[0] + 1
    mean = np.empty(2 * m - 1)
    if keyed:
        total = np.empty(2 * m - 1)
        count = np.empty(2 * m - 1)
        for i in range(m):
            total[i] = keys[i]
            count[i] = 1.0
        for r in range(m - 1):
            total[m + r] = total[kids[r, 0]] + total[kids[r, 1]]
            count[m + r] = count[kids[r, 0]] + count[kids[r, 1]]
        for i in range(2 * m - 1):
            mean[i] = total[i] / count[i]
    out = np.empty(m, dtype=np.int64)
    stack = np.empty(m, dtype=np.int64)
    stack[0] = 2 * m - 2
    depth = 1
    n = 0
    while depth:
        depth -= 1
        node = stack[depth]
        if node < m:
            out[n] = node
            n += 1
            continue
        a = kids[node - m, 0]
        b = kids[node - m, 1]
        if keyed and mean[a] > mean[b]:
            a, b = b, a
        stack[depth] = b
        stack[depth + 1] = a
        depth += 2
    return out


def _cluster_rows(mat: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Row sums per cluster ``(k, m)`` and the block sums ``(k, k)``: one pass over ``mat``."""
    m = mat.shape[0]
    rows = np.zeros((k, m))
    for i in range(m):
        dst = rows[labels[i]]
        src = mat[i]
        for j in range(m):
            dst[j] += src[j]
    block = np.zeros((k, k))
    for f in range(k):
        row = rows[f]
        for j in range(m):
            block[f, labels[j]] += row[j]
    return rows, block


def _nested_silhouettes(
    cum: np.ndarray, size_cum: np.ndarray, starts: np.ndarray, fine_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Mean silhouette of nested cuts whose groups are runs of consecutive fine clusters.

    ``cum[f, i]``: the distance sum of class ``i`` (a sampled class) to the fine clusters before ``f``;
    ``size_cum[f]``: their size; ``starts[c, f]``: whether fine cluster ``f`` starts a group in cut ``c`` (each cut
    refining the previous one); ``fine_of[i]``: the fine cluster of class ``i``. A group's mean distance to a class
    is at least the smallest of its parts', so the nearest other group ``b`` only needs the groups that are new in
    each cut. Returns the mean silhouette and the number of groups of every cut.
    """
    n_cuts, n_fine = starts.shape
    n = cum.shape[1]
    score = np.zeros(n_cuts)
    n_groups = np.zeros(n_cuts, dtype=np.int64)
    nearest = np.full(n, np.inf)
    before = np.zeros(n_fine + 1, dtype=np.bool_)  # group boundaries of the previous cut
    group_start = np.empty(n_fine, dtype=np.int64)  # the first fine cluster of the group of each fine cluster
    group_end = np.empty(n_fine, dtype=np.int64)
    for c in range(n_cuts):
        s = 0
        k = 0
        for f in range(1, n_fine + 1):
            if f == n_fine or starts[c, f]:
                for g in range(s, f):
                    group_start[g] = s
                    group_end[g] = f
                if not (before[s] and before[f]):  # a new group: a possible nearest group for the classes outside
                    size = size_cum[f] - size_cum[s]
                    for i in range(n):
                        if fine_of[i] < s or fine_of[i] >= f:
                            mean = (cum[f, i] - cum[s, i]) / size
                            if mean < nearest[i]:
                                nearest[i] = mean
                s = f
                k += 1
        for f in range(n_fine + 1):
            before[f] = f == 0 or f == n_fine or starts[c, f]
        n_groups[c] = k
        total = 0.0
        for i in range(n):
            s = group_start[fine_of[i]]
            f = group_end[fine_of[i]]
            size = size_cum[f] - size_cum[s]
            if size > 1:
                own = (cum[f, i] - cum[s, i]) / (size - 1)
                b = nearest[i]
                top = own if own > b else b
                if top < 1e-300:
                    top = 1e-300
                total += (b - own) / top
        score[c] = total / n
    return score, n_groups


def _aggregate_blocks(block: np.ndarray, parent: np.ndarray, k: int) -> np.ndarray:  # pragma: no cover - compiled
    """Sums of the ``(n, n)`` ``block`` over the groups ``parent`` (one per row and column): ``(k, k)``."""
    out = np.zeros((k, k))
    n = block.shape[0]
    for a in range(n):
        dst = out[parent[a]]
        src = block[a]
        for b in range(n):
            dst[parent[b]] += src[b]
    return out


def _seed_update(
    nearest: np.ndarray, active: np.ndarray, prod: np.ndarray, sq_rows: np.ndarray, chosen: np.ndarray, first: bool
) -> None:  # pragma: no cover - compiled
    """k-means++: the squared distance of every row to the nearest centre of each run in ``active`` so far.

    Row ``a`` of ``prod`` is ``x[chosen[a]] @ x.T`` for the new centre of run ``active[a]``; its squared distances
    ``max(sq_rows + sq_rows[chosen] - 2 prod, 0)`` replace the run's row of ``nearest`` on the ``first`` step, and
    lower it after. The float32 operations of the numpy code, in the same order.
    """
    m = nearest.shape[1]
    zero = nearest.dtype.type(0.0)
    two = nearest.dtype.type(2.0)
    for a in range(active.shape[0]):
        row = nearest[active[a]]
        prow = prod[a]
        sc = sq_rows[chosen[a]]
        for i in range(m):
            d = max(sq_rows[i] + sc - two * prow[i], zero)
            row[i] = d if first else min(row[i], d)


def _seed_pick(nearest: np.ndarray, active: np.ndarray, draws: np.ndarray) -> np.ndarray:  # pragma: no cover
    """k-means++: the next centre of each run in ``active``, drawn with probability proportional to ``nearest``.

    The first row at which the (float32) cumulative sum of the run's row of ``nearest`` exceeds ``draws[a]`` times
    its total, as ``numpy.searchsorted(cumsum, draw, side="right")``; -1 when the total is 0 (every row coincides
    with a centre).
    """
    m = nearest.shape[1]
    picks = np.empty(active.shape[0], dtype=np.int64)
    for a in range(active.shape[0]):
        row = nearest[active[a]]
        total = nearest.dtype.type(0.0)
        for i in range(m):
            total += row[i]
        if not total > 0:
            picks[a] = -1
            continue
        target = draws[a] * total
        acc = nearest.dtype.type(0.0)
        pick = m - 1
        for i in range(m):
            acc += row[i]
            if acc > target:
                pick = i
                break
        picks[a] = pick
    return picks


def _residual_pairs(
    mat: np.ndarray, labels: np.ndarray, block_mean: np.ndarray, cut: float, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    m = mat.shape[0]
    k = block_mean.shape[0]
    rows = np.empty(cap, np.int64)
    cols = np.empty(cap, np.int64)
    vals = np.empty(cap, np.float64)
    count = 0
    top = -np.inf
    for i in range(m):
        li = labels[i]
        means = block_mean[li]
        lowest = np.inf
        for g in range(k):
            if g != li and means[g] < lowest:
                lowest = means[g]
        bound = cut + lowest - 1e-9  # no pair of row i below it can reach the cut (with room for rounding)
        row = mat[i]
        for j in range(i + 1, m):
            if row[j] >= bound:
                lj = labels[j]
                if lj != li:
                    r = row[j] - means[lj]
                    if r >= cut:
                        if r > top:
                            top = r
                        if count < cap:
                            rows[count] = i
                            cols[count] = j
                            vals[count] = r
                        count += 1
    kept = min(count, cap)
    return rows[:kept], cols[:kept], vals[:kept], count, top


def _top_two(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Each row's two largest values off the diagonal and their columns (ties to the lower column)."""
    m = mat.shape[0]
    idx = np.full((m, 2), -1, np.int64)
    val = np.full((m, 2), -np.inf)
    for i in range(m):
        row = mat[i]
        b0, b1 = -np.inf, -np.inf
        j0, j1 = -1, -1
        for j in range(m):
            if j == i:
                continue
            v = row[j]
            if v > b0:
                b1, j1 = b0, j0
                b0, j0 = v, j
            elif v > b1:
                b1, j1 = v, j
        idx[i, 0], idx[i, 1] = j0, j1
        val[i, 0], val[i, 1] = b0, b1
    return idx, val


class _Compiled(NamedTuple):
    nn_chain: Callable[..., Any]
    label: Callable[..., Any]
    mirror_upper: Callable[..., Any]
    max_asymmetry: Callable[..., Any]
    upper_moments: Callable[..., Any]
    cross_sums: Callable[..., Any]
    tree_ranges: Callable[..., Any]
    leaves: Callable[..., Any]
    cluster_rows: Callable[..., Any]
    nested_silhouettes: Callable[..., Any]
    aggregate_blocks: Callable[..., Any]
    seed_update: Callable[..., Any]
    seed_pick: Callable[..., Any]
    residual_pairs: Callable[..., Any]
    top_two: Callable[..., Any]


@functools.cache
def _compiled() -> _Compiled | None:
    """The compiled kernels, or ``None`` (with a warning) if numba cannot be imported."""
    try:
        import numba
    except Exception as err:  # pragma: no cover - depends on the installation
        warnings.warn(
            f"numba could not be imported ({err!r}), so the structure analysis uses scipy's linkage and numpy (slower, "
            "and they hold the GIL). Reinstall numba, or set LIGHTNING_CLASSIM_NUMBA=0 to silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    jit = numba.njit(cache=True, nogil=True)
    return _Compiled(
        nn_chain=jit(_nn_chain),
        label=jit(_label),
        mirror_upper=jit(_mirror_upper),
        max_asymmetry=jit(_max_asymmetry),
        upper_moments=jit(_upper_moments),
        cross_sums=jit(_cross_sums),
        tree_ranges=jit(_tree_ranges),
        leaves=jit(_leaves),
        cluster_rows=jit(_cluster_rows),
        nested_silhouettes=jit(_nested_silhouettes),
        aggregate_blocks=jit(_aggregate_blocks),
        seed_update=jit(_seed_update),
        seed_pick=jit(_seed_pick),
        residual_pairs=jit(_residual_pairs),
        top_two=jit(_top_two),
    )


def available() -> bool:
    """Whether the compiled kernels can run: :data:`ENABLED` and numba imports."""
    return ENABLED and _compiled() is not None


def _require() -> _Compiled:
    kernels = _compiled()
    if kernels is None:
        raise RuntimeError("numba cannot be imported; check `available()` before calling the compiled kernels.")
    return kernels


def one_minus(sim: np.ndarray) -> np.ndarray:
    """The square distances ``1 - s`` of the upper triangle of ``sim`` (both triangles), with a zero diagonal.

    Equal to ``squareform(squareform(1 - sim, checks=False))`` without the condensed vector in between, so that the
    caller can let the condensed vector go first (at 10,000 classes: 400 MB).

    Example:
        >>> import numpy as np
        >>> one_minus(np.array([[1.0, 0.25], [0.5, 1.0]])).tolist()
        [[0.0, 0.75], [0.75, 0.0]]
    """
    out = np.subtract(1.0, sim)
    _require().mirror_upper(out)
    return out


def nn_chain_linkage(dist: np.ndarray, method: str) -> np.ndarray:
    """The scipy linkage matrix of a square distance matrix, for the nearest-neighbour chain methods.

    Args:
        dist: ``(m, m)`` symmetric distances, float64 and C-contiguous, with a zero diagonal; overwritten (it is the
            working memory of the chain).
        method: one of :data:`NN_CHAIN_METHODS`.

    Returns:
        The ``(m - 1, 4)`` linkage matrix, equal to ``scipy.cluster.hierarchy.linkage(squareform(dist), method)``.

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> from scipy.spatial.distance import squareform
        >>> d = squareform(np.array([1.0, 4.0, 5.0, 3.0, 6.0, 2.0]))
        >>> bool(np.array_equal(nn_chain_linkage(d.copy(), "complete"), linkage(squareform(d), "complete")))
        True
    """
    if dist.dtype != np.float64 or not dist.flags.c_contiguous or dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(
            f"Expected argument `dist` to be a square C-contiguous float64 matrix, but got dtype {dist.dtype} and "
            f"shape {dist.shape}. Pass `np.ascontiguousarray(d, dtype=np.float64)`."
        )
    kernels = _require()
    z = kernels.nn_chain(dist, NN_CHAIN_METHODS[method])
    z = z[np.argsort(z[:, 2], kind="mergesort")]
    kernels.label(z, dist.shape[0])
    return z


def nested_silhouettes(
    cum: np.ndarray, size_cum: np.ndarray, starts: np.ndarray, fine_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean silhouette of nested cuts whose groups are runs of fine clusters (see ``_silhouette.nested``).

    Args:
        cum: ``(n_fine + 1, n)`` cumulative distance sums of the ``n`` sampled classes over the fine clusters.
        size_cum: ``(n_fine + 1,)`` cumulative sizes of the fine clusters.
        starts: ``(cuts, n_fine)`` whether each fine cluster starts a group, per cut (each refining the previous).
        fine_of: ``(n,)`` the fine cluster of each sampled class.

    Returns:
        The mean silhouette and the number of groups of every cut.
    """
    return _require().nested_silhouettes(
        np.ascontiguousarray(cum, dtype=np.float64),
        np.ascontiguousarray(size_cum, dtype=np.float64),
        np.ascontiguousarray(starts, dtype=np.bool_),
        np.ascontiguousarray(fine_of, dtype=np.int64),
    )


def mirror_upper(out: np.ndarray) -> None:
    """Copy the upper triangle of the square ``out`` onto its lower one and zero its diagonal, in place."""
    _require().mirror_upper(out)


def max_asymmetry(mat: np.ndarray) -> float:
    """Max ``|M - M^T|`` of a square float64 matrix; NaN or infinite if it holds a value that is not finite.

    Example:
        >>> import numpy as np
        >>> max_asymmetry(np.array([[1.0, 0.5], [0.25, 1.0]]))
        0.25
    """
    return float(_require().max_asymmetry(np.ascontiguousarray(mat, dtype=np.float64)))


def upper_moments(mat: np.ndarray) -> tuple[float, float, float, float, float]:
    """Mean, sums of squared and cubed deviations from the mean, maximum and minimum of the upper triangle (``k = 1``).

    Example:
        >>> import numpy as np
        >>> upper_moments(np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 3.0], [3.0, 3.0, 1.0]]))
        (2.0, 6.0, -6.0, 3.0, 0.0)
    """
    mean, s2, s3, top, low = _require().upper_moments(np.ascontiguousarray(mat, dtype=np.float64))
    return float(mean), float(s2), float(s3), float(top), float(low)


def leaf_order(kids: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """Leaf order of a tree given by the children of its merges (``linkage[:, :2]``), without recursion.

    As scipy's ``leaves_list`` (first child first), or with ``keys`` (one per leaf) the child whose leaves have the
    smaller mean key first.
    """
    keyed = keys is not None
    values = np.ascontiguousarray(keys, dtype=np.float64) if keyed else np.zeros(0)
    return _require().leaves(np.ascontiguousarray(kids, dtype=np.int64), values, keyed).astype(np.intp)


def merge_ranges(kids: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each merge sits along a leaf order: ``[start, split)`` holds its first child there, ``[split, end)``."""
    start, split, end = _require().tree_ranges(
        np.ascontiguousarray(kids, dtype=np.int64), np.ascontiguousarray(order, dtype=np.int64)
    )
    return start.astype(np.intp), split.astype(np.intp), end.astype(np.intp)


def merge_cross_sums(mat: np.ndarray, order: np.ndarray, ranges: tuple[np.ndarray, ...]) -> np.ndarray:
    """Sum of ``mat`` over the pairs of classes that each merge joins (``ranges`` from :func:`merge_ranges`)."""
    start, split, end = (np.ascontiguousarray(r, dtype=np.int64) for r in ranges)
    return _require().cross_sums(mat, np.ascontiguousarray(order, dtype=np.int64), start, split, end)


def cluster_rows(mat: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row sums per cluster ``(k, m)`` (row ``c`` sums the rows of cluster ``c``) and the ``(k, k)`` block sums."""
    return _require().cluster_rows(mat, np.ascontiguousarray(labels, dtype=np.int64), k)


def aggregate_blocks(block: np.ndarray, parent: np.ndarray, k: int) -> np.ndarray:
    """Sums of a square ``block`` over groups of its rows and columns, in ``O(n^2)``.

    ``E^T block E`` for the indicator ``E`` of ``parent`` (the group of each row), without its ``O(n^2 k)`` products.

    Example:
        >>> import numpy as np
        >>> aggregate_blocks(np.arange(9.0).reshape(3, 3), np.array([0, 1, 0]), 2).tolist()
        [[16.0, 8.0], [8.0, 4.0]]
    """
    return _require().aggregate_blocks(
        np.ascontiguousarray(block, dtype=np.float64), np.ascontiguousarray(parent, dtype=np.int64), k
    )


def seed_update(
    nearest: np.ndarray, active: np.ndarray, prod: np.ndarray, sq_rows: np.ndarray, chosen: np.ndarray, first: bool
) -> None:
    """k-means++ seeds (``_failed.plus_plus_seeds``): lower ``nearest[active]`` by the new centres ``chosen``.

    ``prod`` holds ``x[chosen] @ x.T``; ``nearest`` (runs, m) is overwritten in the rows ``active`` (all of them,
    from scratch, on the ``first`` step).
    """
    _require().seed_update(nearest, active, prod, sq_rows, chosen, first)


def seed_pick(nearest: np.ndarray, active: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """k-means++ seeds: the next centre of each run in ``active`` for uniform ``draws`` (-1 where all are 0).

    Example:
        >>> import numpy as np
        >>> near = np.array([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
        >>> seed_pick(near, np.array([0, 1]), np.array([0.5, 0.5])).tolist()
        [2, -1]
    """
    return _require().seed_pick(nearest, np.ascontiguousarray(active, dtype=np.int64), draws).astype(np.intp)


def residual_pairs(
    mat: np.ndarray, labels: np.ndarray, block_mean: np.ndarray, cut: float, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """Pairs ``i < j`` of classes in different groups whose residual ``mat[i, j] - block_mean[g_i, g_j]`` is ``>= cut``.

    Returns the first ``cap`` such pairs (row by row: rows, columns, residuals), the number of all of them, and the
    largest of their residuals (``-inf`` if there is none).

    Example:
        >>> import numpy as np
        >>> sim = np.array([[1.0, 0.5, 0.9], [0.5, 1.0, 0.1], [0.9, 0.1, 1.0]])
        >>> rows, cols, vals, count, top = residual_pairs(sim, np.array([0, 1, 1]), np.full((2, 2), 0.5), 0.3, 8)
        >>> rows.tolist(), cols.tolist(), vals.round(2).tolist(), count, round(top, 2)
        ([0], [2], [0.4], 1, 0.4)
    """
    rows, cols, vals, count, top = _require().residual_pairs(
        np.ascontiguousarray(mat, dtype=np.float64),
        np.ascontiguousarray(labels, dtype=np.int64),
        np.ascontiguousarray(block_mean, dtype=np.float64),
        float(cut),
        int(cap),
    )
    return rows.astype(np.intp), cols.astype(np.intp), vals, int(count), float(top)


def top_two(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's two largest values off the diagonal, ``(m, 2)``, and their columns (ties to the lower column).

    Example:
        >>> import numpy as np
        >>> idx, val = top_two(np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.9], [0.2, 0.9, 1.0]]))
        >>> idx.tolist(), val.tolist()
        ([[1, 2], [2, 0], [1, 0]], [[0.5, 0.2], [0.9, 0.5], [0.9, 0.2]])
    """
    idx, val = _require().top_two(np.ascontiguousarray(mat, dtype=np.float64))
    return idx.astype(np.intp), val
