"""The numpy and scipy reference of every compiled kernel (:mod:`._kernels`), with the same names and results.

These run when numba is not installed or ``LIGHTNING_CLASSIM_NUMBA=0`` is set (:mod:`._backend` chooses), and the
tests compare the kernels with them. They are written for clarity first: some make temporaries of the matrix's size
that the kernels avoid.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.sparse import csr_matrix
from scipy.spatial.distance import squareform

from lightning_classim._stats import centred_moments, condensed

__all__ = [
    "aggregate_blocks",
    "cluster_rows",
    "leaf_order",
    "max_asymmetry",
    "merge_cross_sums",
    "merge_ranges",
    "mirror_upper",
    "nested_silhouettes",
    "nn_chain_linkage",
    "one_minus",
    "residual_pairs",
    "seed_pick",
    "seed_update",
    "top_two",
    "upper_moments",
]

#: Rows per chunk of the pass over the residual pairs.
_ROWS_CHUNK = 256


def mirror_upper(out: np.ndarray) -> None:
    """Copy the upper triangle of the square ``out`` onto its lower one and zero its diagonal, in place."""
    lower = np.tril_indices(out.shape[0], -1)
    out[lower] = out.T[lower]
    np.fill_diagonal(out, 0.0)


def one_minus(sim: np.ndarray) -> np.ndarray:
    """The square distances ``1 - s`` of the upper triangle of ``sim`` (both triangles), with a zero diagonal."""
    out = np.subtract(1.0, sim)
    mirror_upper(out)
    return out


def nn_chain_linkage(dist: np.ndarray, method: str) -> np.ndarray:
    """Scipy's linkage of a square distance matrix (through its condensed vector)."""
    return scipy_linkage(squareform(dist, checks=False), method=method)


def max_asymmetry(mat: np.ndarray, tile: int = 128) -> float:
    """Max ``|M - M^T|``, tile by tile; NaN or infinite if ``mat`` holds a value that is not finite."""
    m = mat.shape[0]
    worst = 0.0
    with np.errstate(invalid="ignore"):  # inf - inf
        for i in range(0, m, tile):
            for j in range(i, m, tile):
                diff = float(np.abs(mat[i : i + tile, j : j + tile] - mat[j : j + tile, i : i + tile].T).max())
                if not diff <= worst:  # also true for NaN
                    worst = diff
                    if not math.isfinite(diff):
                        return diff
    return worst


def upper_moments(mat: np.ndarray) -> tuple[float, float, float, float, float]:
    """Mean, sums of squared and cubed deviations from the mean, maximum and minimum of the upper triangle."""
    pairs = condensed(mat)
    mean, s2, s3 = centred_moments(pairs)
    return mean, s2, s3, float(pairs.max()), float(pairs.min())


def leaf_order(kids: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """Leaf order of a tree (``linkage[:, :2]``), iteratively: first child first, or by the smaller mean key."""
    kids = np.asarray(kids).astype(np.intp)
    m = kids.shape[0] + 1
    mean = np.zeros(2 * m - 1)
    if keys is not None:
        total = np.zeros(2 * m - 1)
        count = np.zeros(2 * m - 1)
        total[:m] = keys
        count[:m] = 1
        for i, (a, b) in enumerate(kids.tolist()):
            total[m + i] = total[a] + total[b]
            count[m + i] = count[a] + count[b]
        mean = total / count
    out: list[int] = []
    stack = [2 * m - 2]
    while stack:
        node = stack.pop()
        if node < m:
            out.append(node)
            continue
        a, b = (int(x) for x in kids[node - m])
        if keys is not None and mean[a] > mean[b]:
            a, b = b, a
        stack.append(b)
        stack.append(a)
    return np.asarray(out, dtype=np.intp)


def merge_ranges(kids: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each merge sits along a leaf order: ``[start, split)`` holds one child, ``[split, end)`` the other."""
    kids = np.asarray(kids).astype(np.intp)
    m = order.shape[0]
    pos = np.empty(m, dtype=np.intp)
    pos[order] = np.arange(m)
    start: list[int] = pos.tolist() + [0] * (m - 1)
    end: list[int] = (pos + 1).tolist() + [0] * (m - 1)
    split = [0] * (m - 1)
    for r, (a, b) in enumerate(kids.tolist()):
        v = m + r
        if start[a] < start[b]:
            start[v], split[r], end[v] = start[a], start[b], end[b]
        else:
            start[v], split[r], end[v] = start[b], start[a], end[a]
    return np.asarray(start[m:], dtype=np.intp), np.asarray(split, dtype=np.intp), np.asarray(end[m:], dtype=np.intp)


def merge_cross_sums(mat: np.ndarray, order: np.ndarray, ranges: tuple[np.ndarray, ...]) -> np.ndarray:
    """Sum of ``mat`` over the pairs of classes that each merge joins: rectangles of the ordered matrix."""
    start, split, end = ranges
    m = order.shape[0]
    prefix = np.zeros((m + 1, m + 1))
    np.cumsum(np.cumsum(mat[np.ix_(order, order)], axis=0), axis=1, out=prefix[1:, 1:])
    return prefix[split, end] - prefix[start, end] - prefix[split, split] + prefix[start, split]


def cluster_rows(mat: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row sums per cluster ``(k, m)`` and the ``(k, k)`` block sums: two sparse indicator products."""
    m = mat.shape[0]
    indicator = csr_matrix((np.ones(m), (labels, np.arange(m))), shape=(k, m))
    rows = np.asarray(indicator @ mat)
    block = np.asarray(indicator @ np.ascontiguousarray(rows.T)).T
    return rows, block


def aggregate_blocks(block: np.ndarray, parent: np.ndarray, k: int) -> np.ndarray:
    """``E^T block E`` for the indicator ``E`` of ``parent``: the sums of ``block`` over groups."""
    agg = np.zeros((block.shape[0], k))
    agg[np.arange(block.shape[0]), parent] = 1.0
    return agg.T @ block @ agg


def nested_silhouettes(
    cum: np.ndarray, size_cum: np.ndarray, starts: np.ndarray, fine_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean silhouette of nested cuts whose groups are runs of fine clusters (see ``_silhouette.nested``).

    The distinct groups of all cuts are enumerated once; the nearest other group of a class is updated cut after
    cut from the groups that are new in it (each cut refines the previous one, and a group's mean distance is at
    least the smallest of its parts').
    """
    n_fine = starts.shape[1]
    n = fine_of.shape[0]
    cols = np.arange(n)
    seg_of_fine = np.cumsum(starts, axis=1) - 1  # group of each fine cluster, per cut
    n_seg = seg_of_fine[:, -1] + 1
    offsets = np.concatenate([[0], np.cumsum(n_seg)[:-1]])
    first = np.nonzero(starts)[1]
    ends = np.append(first[1:], n_fine)
    ends[offsets + n_seg - 1] = n_fine
    uniq, seg_u = np.unique(first * (n_fine + 1) + ends, return_inverse=True)
    u_start, u_end = uniq // (n_fine + 1), uniq % (n_fine + 1)
    u_sums = cum[u_end] - cum[u_start]  # (distinct groups, rows)
    u_sizes = size_cum[u_end] - size_cum[u_start]
    u_means = u_sums / u_sizes[:, None]
    own = seg_u[(seg_of_fine + offsets[:, None])[:, fine_of]]  # (cuts, rows): the class's own group
    own_size = u_sizes[own]
    a = u_sums[own, cols] / np.maximum(own_size - 1, 1)
    b = np.empty((starts.shape[0], n))
    seen: set[int] = set()
    current = np.full(n, np.inf)
    for i in range(starts.shape[0]):
        groups = seg_u[offsets[i] : offsets[i] + n_seg[i]]
        new = np.asarray([g for g in groups.tolist() if g not in seen], dtype=np.intp)
        seen.update(new.tolist())
        if new.shape[0]:
            vals = u_means[new]
            vals[new[:, None] == own[i][None, :]] = np.inf
            np.minimum(current, vals.min(axis=0), out=current)
        b[i] = current
    with np.errstate(invalid="ignore"):
        sil = (b - a) / np.maximum(np.maximum(a, b), 1e-300)
    sil[own_size == 1] = 0.0
    return sil.mean(axis=1), n_seg


def seed_update(
    nearest: np.ndarray, active: np.ndarray, prod: np.ndarray, sq_rows: np.ndarray, chosen: np.ndarray, first: bool
) -> None:
    """k-means++: lower ``nearest[active]`` by the squared distances to the new centres ``chosen`` (replace: first)."""
    d = np.maximum(sq_rows[None, :] + sq_rows[chosen, None] - nearest.dtype.type(2.0) * prod, 0).astype(nearest.dtype)
    nearest[active] = d if first else np.minimum(nearest[active], d)


def seed_pick(nearest: np.ndarray, active: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """k-means++: the next centre of each run in ``active`` for uniform ``draws`` (-1 where all are 0)."""
    near = nearest[active]
    cum = np.cumsum(near, axis=1)
    total = cum[:, -1]
    target = draws * total  # float64, as the kernel's
    chosen = np.minimum(np.count_nonzero(cum <= target[:, None], axis=1), near.shape[1] - 1).astype(np.intp)
    chosen[~(total > 0)] = -1
    return chosen


def residual_pairs(
    mat: np.ndarray, labels: np.ndarray, block_mean: np.ndarray, cut: float, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """Pairs ``i < j`` in different groups whose residual ``mat[i, j] - block_mean[g_i, g_j]`` is ``>= cut``.

    Returns the first ``cap`` of them (row by row: rows, columns, residuals), their number, and the largest residual.
    """
    m = mat.shape[0]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    count, top = 0, -math.inf
    for lo in range(0, m, _ROWS_CHUNK):
        hi = min(lo + _ROWS_CHUNK, m)
        res = mat[lo:hi] - block_mean[labels[lo:hi]][:, labels]
        upper_cross = (labels[lo:hi, None] != labels[None, :]) & (np.arange(lo, hi)[:, None] < np.arange(m)[None, :])
        i, j = np.nonzero(upper_cross & (res >= cut))
        count += i.shape[0]
        found.append((i + lo, j, res[i, j]))
        if i.shape[0]:
            top = max(top, float(found[-1][2].max()))
    rows, cols, vals = (np.concatenate(parts)[:cap] for parts in zip(*found))
    return rows.astype(np.intp), cols.astype(np.intp), vals, count, top


def top_two(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's two largest values off the diagonal, ``(m, 2)``, and their columns (ties to the lower column)."""
    m = mat.shape[0]
    idx = np.empty((m, 2), dtype=np.intp)
    val = np.empty((m, 2))
    for lo in range(0, m, _ROWS_CHUNK):
        rows = np.array(mat[lo : lo + _ROWS_CHUNK], dtype=np.float64)
        rows[np.arange(rows.shape[0]), np.arange(lo, lo + rows.shape[0])] = -np.inf
        order = np.argsort(-rows, axis=1, kind="stable")[:, :2]
        idx[lo : lo + rows.shape[0]] = order
        val[lo : lo + rows.shape[0]] = np.take_along_axis(rows, order, axis=1)
    return idx, val
