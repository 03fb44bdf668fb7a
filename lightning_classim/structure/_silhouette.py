"""The mean silhouette of the tree's cuts, for the automatic number of groups.

For large ``m`` the silhouettes are averaged over 1,000 evenly spaced classes (each against all classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightning_classim.structure._backend import ops
from lightning_classim.structure._groups import BlockSums
from lightning_classim.structure._tree import Cuts, Distances, maxclust_heights

__all__ = ["dense", "nested", "sample_rows"]

#: The silhouettes are averaged over at most this many (evenly spaced) classes.
SAMPLE = 1000


def sample_rows(m: int) -> np.ndarray:
    """The classes whose silhouettes are averaged: all, or 1,000 evenly spaced ones for large ``m``."""
    return np.arange(m) if m <= SAMPLE else np.linspace(0, m - 1, SAMPLE).astype(np.intp)


def nested(sums: BlockSums, gaps: np.ndarray, z: np.ndarray, order: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Mean silhouette of every cut into ``k`` groups at once, from the sums over the clusters of a finer cut.

    For a monotone tree and the distance ``1 - s``: every cut nests in the fine one, and each of its groups is a
    run of consecutive fine clusters along the leaf order; so the distance sums of a class to the groups of every
    cut are differences of one cumulative sum over the fine clusters. Same values as :func:`dense`.
    """
    assert sums.fine is not None
    fine, sizes_f = sums.fine, sums.fine_sizes
    n_fine = sizes_f.shape[0]
    rows = sample_rows(sums.num_classes)
    # distance sums of each fine cluster to the sample classes (fine x rows): |c| - sum of similarities, without the
    # class itself; everything below is laid out with the sample classes along the last axis, so gathers copy rows
    n = rows.shape[0]
    cols = np.arange(n)
    dfine = sizes_f[:, None] - sums.rows_at(rows)
    dfine[fine[rows], cols] -= 1.0 - sums.diag[rows]
    cum = np.zeros((n_fine + 1, n))
    np.cumsum(dfine, axis=0, out=cum[1:])
    size_cum = np.concatenate([[0.0], np.cumsum(sizes_f)])
    # the height of the gap in front of each fine cluster (fine clusters are numbered along the order)
    first = np.searchsorted(fine[order], np.arange(n_fine))
    gap = gaps[first[1:] - 1]
    k_arr = np.asarray(list(ks))
    starts = np.ones((k_arr.shape[0], n_fine), dtype=bool)
    starts[:, 1:] = gap[None, :] > maxclust_heights(z, k_arr)[:, None]
    score, n_seg = ops().nested_silhouettes(cum, size_cum, starts, fine[rows])
    return {int(k): float(score[i]) for i, k in enumerate(k_arr) if n_seg[i] >= 2}


def dense(dist: Distances, cuts: Cuts, ks: Sequence[int]) -> dict[int, float]:
    """Mean silhouette of the cuts into k groups, from distance rows (any distance, any tree)."""
    m = dist.sim.shape[0]
    rows = sample_rows(m)
    kmax = max(ks)
    fine = cuts.into(kmax)
    n_fine = int(fine.max()) + 1
    onehot = np.zeros((m, n_fine))
    onehot[np.arange(m), fine] = 1.0
    drows = dist.rows(rows)
    fine_sums = drows @ onehot  # (rows, n_fine)
    out: dict[int, float] = {}
    for k in ks:
        labels = cuts.into(k)
        n_k = int(labels.max()) + 1
        if n_k < 2 or n_k >= m:
            continue
        # coarse cluster sums are sums of fine cluster sums when the cuts nest (monotone trees)
        fine_to_coarse = np.zeros(n_fine, dtype=np.intp)
        fine_to_coarse[fine] = labels
        if np.array_equal(fine_to_coarse[fine], labels):
            mapping = np.zeros((n_fine, n_k))
            mapping[np.arange(n_fine), fine_to_coarse] = 1.0
            sums = fine_sums @ mapping
        else:  # inversions (centroid/median): compute directly
            oh = np.zeros((m, n_k))
            oh[np.arange(m), labels] = 1.0
            sums = drows @ oh
        sizes = np.bincount(labels, minlength=n_k).astype(np.float64)
        own = labels[rows]
        own_size = sizes[own]
        a = sums[np.arange(len(rows)), own] / np.maximum(own_size - 1, 1)
        other = sums / sizes[None, :]
        other[np.arange(len(rows)), own] = np.inf
        b = other.min(axis=1)
        s = (b - a) / np.maximum(np.maximum(a, b), 1e-300)
        s[own_size == 1] = 0.0
        out[k] = float(s.mean())
    return out
