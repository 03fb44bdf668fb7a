"""The matrix check, the distances, the linkage tree, its leaf order and its flat cuts.

The leaf order comes from an iterative traversal, never from scipy's recursive ``dendrogram()``, so that deep trees
of tens of thousands of classes work. Flat cuts follow ``scipy.cluster.hierarchy.fcluster`` exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, optimal_leaf_ordering
from scipy.cluster.hierarchy import linkage as scipy_linkage

from lightning_classim._stats import condensed, moments_to_stats
from lightning_classim._validation import check_order
from lightning_classim.options import DistanceKind
from lightning_classim.structure._backend import NN_CHAIN_METHODS, ops, square_matrix_steps

__all__ = ["Cuts", "Distances", "align_order", "as_similarity_matrix", "leaf_order"]

_EUCLIDEAN_METHODS = ("ward", "centroid", "median")


def as_similarity_matrix(similarity: Any, name: str = "similarity", atol: float = 1e-5) -> np.ndarray:
    """Validate a square, symmetric, finite matrix with values in ``[-1, 1]`` and return it as float64 numpy.

    Args:
        similarity: a numpy array or torch tensor of shape ``(m, m)``, ``m >= 2``.
        name: the argument name used in error messages.
        atol: tolerated asymmetry, and how far values may lie outside ``[-1, 1]`` (rounding).

    Returns:
        The matrix as C-contiguous float64 (a copy only if it was not one already).

    Raises:
        ValueError: if it is not 2-d and square, has fewer than 2 classes, holds NaN or infinite values, is not
            symmetric within ``atol``, or holds values outside ``[-1, 1]``.
    """
    if hasattr(similarity, "detach"):
        similarity = similarity.detach().cpu().double().numpy()
    try:
        mat = np.ascontiguousarray(similarity, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Expected argument `{name}` to be a square (m, m) matrix of numbers, but got {type(similarity).__name__} "
            f"({err}). Pass the output of `ClassSimilarity.compute()`."
        ) from None
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(
            f"Expected argument `{name}` to be a square (m, m) matrix, but got shape {mat.shape}. "
            "Pass the output of `ClassSimilarity.compute()`."
        )
    if mat.shape[0] < 2:
        raise ValueError(f"Expected argument `{name}` to have at least 2 classes, but got shape {mat.shape}.")
    # one tile pass: a non-finite entry makes its tile's difference NaN or infinite, so finiteness comes for free
    asym = ops().max_asymmetry(mat)
    if not math.isfinite(asym):
        bad = np.unique(np.nonzero(~np.isfinite(mat))[0])
        raise ValueError(
            f"Expected argument `{name}` to be finite, but rows {bad[:10].tolist()} hold NaN or infinite values. "
            "Compute the matrix with `undefined='zero'` (the default) so that classes with a constant score get 0."
        )
    if asym > atol:
        raise ValueError(
            f"Expected argument `{name}` to be symmetric, but it differs from its transpose by up to {asym:.3g} "
            f"(tolerance {atol}). Pass a similarity matrix, or symmetrise it with `(S + S.T) / 2`."
        )
    return mat


def check_range(mat: np.ndarray, low: float, top: float, name: str = "similarity", atol: float = 1e-5) -> None:
    """Refuse values outside ``[-1, 1]`` (``low`` and ``top`` bound the off-diagonal values, from the moments' pass).

    Raises:
        ValueError: naming the value found outside the range.
    """
    diag = np.diagonal(mat)
    values = (top, low, float(diag.max()), float(diag.min()))
    bad = [v for v in values if not -1.0 - atol <= v <= 1.0 + atol]
    if bad:
        raise ValueError(
            f"Expected argument `{name}` to hold similarities in [-1, 1] (correlations or cosines), but it holds "
            f"{bad[0]:.6g}. Rescale it to [-1, 1] (e.g. divide counts by their maximum), or pass the output of "
            "`ClassSimilarity.compute()`."
        )


def _row_distances(sim: np.ndarray) -> np.ndarray:
    """Square Euclidean distances between the rows of ``sim`` (via one matrix product)."""
    gram = sim @ sim.T
    sq = np.diagonal(gram).copy()
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2, out=d2)


class Distances:
    """The pairs of classes: off-diagonal moments of the similarity, and the distances for the linkage.

    ``condensed`` is scipy's condensed distance vector, made only when a step needs it. ``linear`` is true when the
    distance is exactly ``1 - s`` for every pair (correlation distance, a non-Euclidean method, no similarity above
    1), so that sums of distances follow from sums of similarities. ``rows(idx)`` gives full distance rows on demand.
    """

    def __init__(self, sim: np.ndarray, distance: DistanceKind, method: str) -> None:
        self.sim = sim
        self.euclid = method in _EUCLIDEAN_METHODS
        m = sim.shape[0]
        self.n_pairs = m * (m - 1) // 2
        self.mean, self.s2, s3, self.top, self.low = ops().upper_moments(sim)
        self.moments = moments_to_stats(self.n_pairs, self.mean, self.s2, s3)
        self.square = _row_distances(sim) if distance == "rows" else None
        self.linear = self.square is None and not self.euclid and self.top <= 1.0
        self._condensed: np.ndarray | None = None

    @property
    def condensed(self) -> np.ndarray:
        """The condensed distance vector of scipy, made on first use."""
        if self._condensed is None:
            self._condensed = (
                condensed(self.square) if self.square is not None else self._transform(condensed(self.sim))
            )
        return self._condensed

    def linkage(self, method: str) -> np.ndarray:
        """The scipy linkage matrix of the distances.

        For the nearest-neighbour chain methods, when the backend works on square matrices (the compiled kernel:
        equal to scipy's, faster, and without holding the GIL), on a square matrix of the distances made straight
        from the similarity (or a copy of the row distances): the condensed vector is not made at all. Else scipy's
        linkage on the condensed vector.
        """
        if method not in NN_CHAIN_METHODS or not square_matrix_steps():
            return scipy_linkage(self.condensed, method=method)
        if self.square is not None:
            square = self.square.copy()
        elif self.linear:
            square = ops().one_minus(self.sim)
        else:
            square = self._transform(self.sim.copy())
            ops().mirror_upper(square)
        return ops().nn_chain_linkage(square, method)

    def optimal_ordering(self, z: np.ndarray) -> np.ndarray:
        """Scipy's optimal leaf ordering of the tree ``z`` on these distances."""
        return optimal_leaf_ordering(z, self.condensed)

    def _transform(self, s: np.ndarray) -> np.ndarray:
        """The distances of similarities ``s``, computed in place (``s`` is overwritten)."""
        d = np.subtract(1.0, s, out=s)
        np.maximum(d, 0.0, out=d)
        if self.euclid:
            np.sqrt(np.multiply(d, 2.0, out=d), out=d)
        return d

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Full distance rows of the classes ``idx``."""
        if self.square is not None:
            return self.square[idx]
        d = self._transform(self.sim[idx])  # a copy: fancy indexing
        d[np.arange(len(idx)), idx] = 0.0
        return d

    def cophenetic_corr(self, z: np.ndarray, coph_dot_d: float) -> float:
        """Pearson correlation of the cophenetic distances with the distances, given the sum of their products."""
        n = self.n_pairs
        sizes = child_sizes(z)
        cross = sizes[:, 0] * sizes[:, 1]  # pairs joined at each merge
        h = z[:, 2]
        mean_c = float(cross @ h) / n
        var_c = float(cross @ (h * h)) / n - mean_c * mean_c
        if self.linear:  # d = 1 - s: its centred sums are those of the similarity
            mean_d, var_d = 1.0 - self.mean, self.s2 / n
        else:
            d = self.condensed
            mean_d = float(d.sum()) / n
            var_d = float(np.dot(d, d)) / n - mean_d * mean_d
        cov = coph_dot_d / n - mean_c * mean_d
        den = math.sqrt(max(var_c, 0.0) * max(var_d, 0.0))
        return cov / den if den > 0 else float("nan")


# ----------------------------------------------------------------------------------------------- the tree


def children(z: np.ndarray) -> np.ndarray:
    """The two children of every merge, as indices."""
    return z[:, :2].astype(np.intp)


def child_sizes(z: np.ndarray) -> np.ndarray:
    """Number of classes under each of the two children of every merge, ``(m - 1, 2)``."""
    m = z.shape[0] + 1
    node_size = np.concatenate([np.ones(m), z[:, 3]])
    return node_size[children(z)]


def gap_heights(z: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Cophenetic distance between consecutive classes along the leaf order (``m - 1`` values).

    Each gap between neighbours along the order sits under exactly one merge, so cutting the tree at height ``t``
    puts a group boundary exactly at the gaps higher than ``t``.
    """
    gap = np.empty(z.shape[0])
    gap[split - 1] = z[:, 2]
    return gap


def maxclust_heights(z: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """The cut height that ``fcluster(z, k, "maxclust")`` uses for each ``k < m``, for a monotone tree.

    It is the lowest merge height ``t`` at which at most ``k`` groups remain, ``1 + #(heights > t) <= k``; so ties
    can leave fewer than ``k`` groups, as in scipy.
    """
    heights = np.sort(z[:, 2])
    remaining = heights.shape[0] + 1 - np.searchsorted(heights, heights, side="right")  # non-increasing
    first = np.searchsorted(-remaining, -ks, side="left")
    return heights[first]


def leaf_order(z: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """Leaf order of a linkage, computed iteratively (with ``keys``, the child with the smaller mean key first)."""
    return ops().leaf_order(children(z), keys)


def positions(order: np.ndarray) -> np.ndarray:
    """The position of each class along ``order``."""
    pos = np.empty(len(order))
    pos[np.asarray(order)] = np.arange(len(order))
    return pos


def check_linkage(linkage: Any, name: str = "linkage") -> np.ndarray:
    """A scipy linkage matrix as float64, checked to be a tree (each merge joins two clusters formed before it).

    Raises:
        ValueError: if it has the wrong shape or is not a tree in scipy's format.
    """
    z = np.asarray(linkage)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] != 4 or not np.issubdtype(z.dtype, np.number):
        raise ValueError(
            f"Expected argument `{name}` to be a scipy linkage matrix of shape (m - 1, 4), but got shape "
            f"{z.shape}. Pass `result.linkage` or the output of `scipy.cluster.hierarchy.linkage`."
        )
    z = z.astype(np.float64)
    m = z.shape[0] + 1
    kids = np.nan_to_num(z[:, :2], nan=-1.0, posinf=-1.0, neginf=-1.0)
    formed = m + np.arange(m - 1)[:, None]  # merge r may join leaves and the clusters of merges before it
    whole = np.all(kids == np.floor(kids))
    kids_i = kids.astype(np.intp)
    if (
        not whole
        or (kids_i < 0).any()
        or (kids_i >= formed).any()
        or np.unique(kids_i).size != kids_i.size
        or not np.isfinite(z[:, 2]).all()
    ):
        raise ValueError(
            f"Expected argument `{name}` to be a tree in scipy's format (each merge joins two clusters formed before "
            "it, each cluster is merged once, heights are finite), but it is not. Pass `result.linkage` or the output "
            "of `scipy.cluster.hierarchy.linkage`."
        )
    return z


def align_order(linkage: np.ndarray, previous_order: Any) -> np.ndarray:
    """Orient a tree's leaf order to follow a previous order as far as the tree allows.

    Each merge puts first the child whose classes sat earlier, on average, in ``previous_order``; so consecutive
    heatmaps do not flip for no reason.

    Args:
        linkage: a scipy linkage matrix over ``m`` classes.
        previous_order: the earlier order, a permutation of ``range(m)``.

    Returns:
        The new leaf order.

    Raises:
        ValueError: if ``linkage`` is not a tree in scipy's format, or ``previous_order`` not a permutation.

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> z = linkage(np.array([[0.0], [1.0], [10.0], [11.0]]), "complete")
        >>> align_order(z, [3, 2, 1, 0]).tolist()
        [3, 2, 1, 0]
    """
    z = check_linkage(linkage)
    m = z.shape[0] + 1
    prev = check_order(previous_order, m, "previous_order")
    return leaf_order(z, positions(prev))


def relabel_by_order(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Relabel 0..k-1 by first appearance along ``order``."""
    present, first = np.unique(labels[order], return_index=True)
    mapping = np.zeros(int(labels.max()) + 1, dtype=np.intp)
    mapping[present[np.argsort(first)]] = np.arange(present.shape[0])
    return mapping[labels]


def cut_maxclust(z: np.ndarray, k: int) -> np.ndarray:
    """``fcluster(z, k, "maxclust")`` numbered from 0."""
    return fcluster(z, k, criterion="maxclust").astype(np.intp) - 1


class Cuts:
    """Flat cuts of a linkage, as ``fcluster``'s ``"maxclust"`` and ``"distance"`` criteria make them.

    For a monotone tree a cut at height ``t`` puts a group boundary exactly at the gaps between neighbours along the
    leaf order that are higher than ``t``: an ``O(m)`` cumulative sum, with labels numbered along the order (and
    without scipy's validation of the tree at every call). Other trees go through ``fcluster``.
    """

    def __init__(self, z: np.ndarray, order: np.ndarray) -> None:
        self.z = z
        self.order = order
        self.monotone = bool(np.all(z[1:, 2] >= z[:-1, 2]))
        self.ranges = ops().merge_ranges(children(z), order) if self.monotone else None
        self.gaps = gap_heights(z, self.ranges[1]) if self.ranges is not None else None

    def at_height(self, t: float) -> np.ndarray:
        """Groups whose classes are at most ``t`` apart in the tree."""
        if self.gaps is None:
            return fcluster(self.z, t, criterion="distance").astype(np.intp) - 1
        along = np.zeros(self.order.shape[0], dtype=np.intp)
        np.cumsum(self.gaps > t, out=along[1:])
        labels = np.empty_like(along)
        labels[self.order] = along
        return labels

    def into(self, k: int) -> np.ndarray:
        """At most ``k`` groups (fewer when merge heights tie), as ``fcluster(z, k, "maxclust")``."""
        if self.gaps is None:
            return cut_maxclust(self.z, k)
        m = self.order.shape[0]
        return self.at_height(-np.inf if k >= m else float(maxclust_heights(self.z, np.array([k]))[0]))


def fewer_groups_note(n_groups: int | None, k: int, z: np.ndarray, monotone: bool, method: str) -> str:
    """Why a cut gave fewer groups than asked (scipy's ``fcluster`` semantics, which the cuts follow)."""
    m = z.shape[0] + 1
    asked = (
        f"n_groups={n_groups} gave {k} group{'s' if k > 1 else ''}"
        if n_groups is not None
        else "the automatic choice found no cut into 2..max_groups groups and kept 1 group"
    )
    as_scipy = "as `scipy.cluster.hierarchy.fcluster(..., 'maxclust')` cuts"
    if not monotone:
        why = (
            f"the {method} linkage tree has inversions (a merge lower than an earlier one), and a cut at one height "
            f"keeps every class under such a merge together ({as_scipy})"
        )
        fix = "Use a linkage without inversions (complete, average, single, weighted or ward)"
        return f"{asked}: {why}. {fix}."
    # a cut at height t gives 1 + (merges above t) groups: the counts a cut can give are these, and m; the merges
    # between k groups and the next count all sit at one height
    heights = z[:, 2]
    counts = np.append(1 + heights.shape[0] - np.searchsorted(heights, np.unique(heights), side="right"), m)
    above = int(counts[counts >= (2 if n_groups is None else n_groups)].min())
    tie = heights[-(above - k)]
    if above == m and k == 1:
        why = f"all {m - 1} merges tie at height {tie:.4g}: a cut gives 1 or {m} groups, nothing between ({as_scipy})"
        fix = (
            "The classes form one chain of equally near neighbours: no single-linkage cut parts it"
            if method == "single"
            else "Every class is equally far from every other: the matrix holds no groups"
        )
        return f"{asked}: {why}. {fix}."
    why = (
        f"{int(np.count_nonzero(heights == tie))} merges tie at height {tie:.4g} and a cut cannot part them "
        f"({as_scipy}); the next cut gives {above} groups"
    )
    fix = (
        f"Ask for {above} groups, or use `distance_threshold`"
        if n_groups is not None
        else f"Raise `max_groups` to {above} or more, or give `n_groups` or `distance_threshold`"
    )
    if method == "complete" and tie == heights[-1]:
        fix += (
            "; or use method='average': complete linkage ties at the largest distance (e.g. 1 between classes that "
            "never co-occur)"
        )
    return f"{asked}: {why}. {fix}."
