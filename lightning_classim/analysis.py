"""Structure analysis of a class-similarity matrix: ordering, groups, summaries, and structure metrics.

Everything here runs on the CPU with numpy/scipy and compiled kernels (:mod:`._kernels`: a copy of scipy's
nearest-neighbour-chain linkage, equal to it bit for bit, and the steps around it), is deterministic (the same input
gives the same output), and works up to tens of thousands of classes: the leaf order comes from an iterative
traversal (or :func:`scipy.cluster.hierarchy.leaves_list`), never from the recursive ``dendrogram()``.

Choices worth knowing:

* Distance. ``distance="correlation"`` uses ``1 - r``; for the methods that assume Euclidean distances (ward,
  centroid, median) it uses ``sqrt(2 (1 - r))``, which is Euclidean for correlations. ``distance="rows"`` is the
  seed notebook's choice: the Euclidean distance between the rows of the matrix.
* Automatic number of groups: the cut of the tree into ``k`` groups, ``k`` in ``2..max_groups``, with the best
  mean silhouette (computed on at most 1,000 evenly spaced classes for large ``m``). Ties go to the smaller ``k``.
  ``max_groups`` defaults to ``max(30, ceil(sqrt(m)))``, so that many classes can hold many groups.
* Group labels run ``0..k-1`` in the order in which the groups appear along the leaf order, so group 0 is the
  first block of the heatmap.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster, leaves_list, optimal_leaf_ordering
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from lightning_classim import _kernels
from lightning_classim._checks import check_choice as _check_choice

LinkageMethod = Literal["single", "complete", "average", "weighted", "ward", "centroid", "median"]
DistanceKind = Literal["correlation", "rows"]
_EUCLIDEAN_METHODS = ("ward", "centroid", "median")

#: Above this many classes, ``optimal_ordering=True`` is refused (it took 76 s at m = 2622 on a 2-core CPU).
OPTIMAL_ORDERING_MAX = 3000
#: Above this many classes, ``optimal_ordering=True`` warns that it will be slow.
OPTIMAL_ORDERING_WARN = 1000
_SILHOUETTE_SAMPLE = 1000
#: From this many classes on, the cophenetic correlation comes from the tree and the fine block sums (below it, from
#: the compiled sums over the tree, or all pairs without the kernels).
_TREE_COPHENET_MIN = 1500
#: Numbers of fuzzy clusters tried for failed groups.
_FCM_CLUSTERS = (2, 3, 5, 9, 17)
#: Seeded restarts of fuzzy c-means per number of clusters (the best objective is kept).
_FCM_RESTARTS = 2
#: Dimension of the residual graph's dominant subspace in which fuzzy c-means clusters its rows (failed groups).
_SKETCH_DIM = 48
#: Pairs of classes whose residual spread (failed groups) is estimated from: all of them up to this many, else a sample.
_SPREAD_SAMPLE = 1 << 12
#: The failed-group search keeps at most this many residual pairs per class (the highest, when more stand out).
_PAIRS_PER_CLASS = 32
#: Rows per chunk of the numpy pass over the residual pairs (without the kernels).
_ROWS_CHUNK = 256
#: Fuzzy c-means stops when no membership moves more than this (memberships are thresholded at about 0.3).
_FCM_TOL = 1e-3
#: The noise edge of the residual rows' spectrum (failed groups): a drop of the squared singular values by this
#: factor or more ...
_GAP_RATIO = 2.5
#: ... among the directions at least this many times the median one.
_NOISE_FACTOR = 3.0
#: Chunk of the passes over all pairs: 64 KB buffers stay in cache and off the page-faulting mmap path.
_CHUNK = 1 << 13

__all__ = [
    "FailedGroup",
    "GroupSummary",
    "SplitGroup",
    "StructureResult",
    "adjusted_rand_index",
    "align_order",
    "analyze",
    "compare_structures",
    "taxonomy_agreement",
]


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GroupSummary:
    """One flat group of classes.

    Attributes:
        group: the group's label (0 is the first block along the leaf order).
        members: the classes in the group, in leaf order.
        names: their names (class names if given, else the indices as strings).
        size: number of members.
        cohesion: mean similarity between two different members (NaN for a single class).
        separation: mean similarity of a member to the classes outside the group (NaN if there are none).
        nearest: the other group with the highest mean similarity to this one (``None`` if there is one group).
        nearest_similarity: that mean similarity (NaN if ``nearest`` is ``None``).
    """

    group: int
    members: tuple[int, ...]
    names: tuple[str, ...]
    size: int
    cohesion: float
    separation: float
    nearest: int | None
    nearest_similarity: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes ``None``)."""
        return {
            "group": self.group,
            "members": list(self.members),
            "names": list(self.names),
            "size": self.size,
            "cohesion": _json_float(self.cohesion),
            "separation": _json_float(self.separation),
            "nearest": self.nearest,
            "nearest_similarity": _json_float(self.nearest_similarity),
        }


@dataclass(frozen=True)
class SplitGroup:
    """Two sets of classes in different groups whose off-diagonal block is dense (paper, section 3.2).

    Attributes:
        groups: the two groups the sets belong to.
        members: the classes of each set.
        similarity: mean similarity between the two sets.
        cohesion: mean cohesion of the two groups; ``similarity / cohesion`` near 1 means that the two sets are
            as similar as classes within one group usually are.
    """

    groups: tuple[int, int]
    members: tuple[tuple[int, ...], tuple[int, ...]]
    similarity: float
    cohesion: float

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready dict with member names."""
        return {
            "groups": list(self.groups),
            "members": [list(s) for s in self.members],
            "names": [[names[i] for i in s] for s in self.members],
            "similarity": _json_float(self.similarity),
            "cohesion": _json_float(self.cohesion),
        }


@dataclass(frozen=True)
class FailedGroup:
    """Mutually similar classes that the tree scatters across several groups (paper, section 3.2).

    Found with fuzzy c-means (overlapping clusters) on the rows of the similarity matrix minus the block means of
    the flat groups, i.e. on the structure that the tree did not capture, taken in that residual's dominant
    subspace when there are more than 48 classes.

    Attributes:
        members: the classes.
        groups: the flat groups they are scattered over.
        similarity: mean similarity between two members that sit in different groups.
    """

    members: tuple[int, ...]
    groups: tuple[int, ...]
    similarity: float

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready dict with member names."""
        return {
            "members": list(self.members),
            "names": [names[i] for i in self.members],
            "groups": list(self.groups),
            "similarity": _json_float(self.similarity),
        }


@dataclass(frozen=True, eq=False)
class StructureResult:
    """The result of :func:`analyze`.

    Attributes:
        similarity: the analysed ``(m, m)`` matrix (float32, original class order, after clipping if asked).
        order: the leaf order, a permutation of ``range(m)``: ``similarity[np.ix_(order, order)]`` is the heatmap.
        linkage: the scipy linkage matrix ``(m - 1, 4)``.
        groups: flat group label of each class, in the original class order.
        summary: one :class:`GroupSummary` per group, in leaf order.
        metrics: structure scalars (see :func:`analyze`).
        split_groups: dense off-diagonal blocks between groups.
        failed_groups: mutually similar classes scattered over several groups.
        class_names: the class names.
        silhouettes: the mean silhouette of every cut the automatic choice tried, ``{k: score}`` (empty when
            ``n_groups`` or ``distance_threshold`` chose the groups).
        notes: what the analysis could not do as asked, in words (e.g. a cut that gave fewer groups than asked, and
            why); :func:`analyze` also issues each as a ``UserWarning``.
    """

    similarity: np.ndarray
    order: np.ndarray
    linkage: np.ndarray
    groups: np.ndarray
    summary: tuple[GroupSummary, ...]
    metrics: dict[str, float]
    split_groups: tuple[SplitGroup, ...] = ()
    failed_groups: tuple[FailedGroup, ...] = ()
    class_names: tuple[str, ...] = field(default=())
    silhouettes: dict[int, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes ``m``."""
        return int(self.similarity.shape[0])

    @property
    def n_groups(self) -> int:
        """Number of flat groups."""
        return len(self.summary)

    @property
    def choice_at_max_groups(self) -> bool:
        """Whether the automatic choice picked the largest number of groups it tried while more were possible.

        The matrix may then have more groups than the range allowed: raise ``max_groups``.
        """
        if not self.silhouettes:
            return False
        top = max(self.silhouettes)
        return _best_k(self.silhouettes) == top and top < self.num_classes - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no matrices): metrics, groups, split and failed groups, the silhouette of each cut."""
        names = self.class_names
        return {
            "num_classes": self.num_classes,
            "n_groups": self.n_groups,
            "metrics": {k: _json_float(v) for k, v in self.metrics.items()},
            "groups": [g.to_dict() for g in self.summary],
            "split_groups": [s.to_dict(names) for s in self.split_groups],
            "failed_groups": [f.to_dict(names) for f in self.failed_groups],
            "silhouettes": {str(k): _json_float(v) for k, v in self.silhouettes.items()},
            "notes": list(self.notes),
        }

    def summary_markdown(self, max_members: int = 12) -> str:
        """The group summary as a markdown table (for TensorBoard's text plugin and reports)."""
        lines = [
            "| group | size | cohesion | separation | nearest group | members |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for g in self.summary:
            shown = ", ".join(_md_escape(n) for n in g.names[:max_members])
            if g.size > max_members:
                shown += f", ... (+{g.size - max_members})"
            nearest = "" if g.nearest is None else f"{g.nearest} ({g.nearest_similarity:.2f})"
            lines.append(f"| {g.group} | {g.size} | {_fmt(g.cohesion)} | {_fmt(g.separation)} | {nearest} | {shown} |")
        for s in self.split_groups:
            a, b = ([self.class_names[i] for i in part] for part in s.members)
            lines.append(
                f"\nSplit group between groups {s.groups[0]} and {s.groups[1]} (similarity {s.similarity:.2f}): "
                f"{', '.join(map(_md_escape, a[:max_members]))} <-> {', '.join(map(_md_escape, b[:max_members]))}"
            )
        for f in self.failed_groups:
            names = [_md_escape(self.class_names[i]) for i in f.members[:max_members]]
            lines.append(
                f"\nFailed group over groups {list(f.groups)} (similarity {f.similarity:.2f}): {', '.join(names)}"
            )
        lines.extend(f"\nNote: {_md_escape(note)}" for note in self.notes)
        if self.choice_at_max_groups:
            lines.append(
                f"\nThe automatic choice picked {max(self.silhouettes)} groups, the most it tried: there may be more. "
                "Raise `max_groups`."
            )
        return "\n".join(lines)


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _fmt(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.2f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


# ----------------------------------------------------------------------------------------------- checks


def as_similarity_matrix(similarity: Any, name: str = "similarity", atol: float = 1e-5) -> np.ndarray:
    """Validate a square, symmetric, finite matrix and return it as float64 numpy.

    Args:
        similarity: a numpy array or torch tensor of shape ``(m, m)``, ``m >= 2``.
        name: the argument name used in error messages.
        atol: tolerated asymmetry.

    Returns:
        The matrix as C-contiguous float64 (a copy only if it was not one already).

    Raises:
        ValueError: if it is not 2-d and square, has fewer than 2 classes, holds NaN or infinite values, or is not
            symmetric within ``atol``.
    """
    if hasattr(similarity, "detach"):
        similarity = similarity.detach().cpu().double().numpy()
    mat = np.ascontiguousarray(similarity, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(
            f"Expected argument `{name}` to be a square (m, m) matrix, but got shape {mat.shape}. "
            "Pass the output of `ClassSimilarity.compute()`."
        )
    if mat.shape[0] < 2:
        raise ValueError(f"Expected argument `{name}` to have at least 2 classes, but got shape {mat.shape}.")
    # one tile pass: a non-finite entry makes its tile's difference NaN or infinite, so finiteness comes for free
    asym = _kernels.max_asymmetry(mat) if _kernels.available() else _max_asymmetry(mat)
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


def _max_asymmetry(mat: np.ndarray, tile: int = 128) -> float:
    """Max |M - M^T|, tile by tile (a whole-matrix transpose is cache-unfriendly and allocates m^2).

    NaN or infinite if ``mat`` holds a non-finite value (``x - y`` is then NaN or infinite for any ``y``).
    """
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


def _check_order(order: Any, m: int, name: str = "order") -> np.ndarray:
    arr = np.asarray(order)
    if arr.ndim != 1 or arr.shape[0] != m or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"Expected argument `{name}` to be a 1-d integer permutation of range({m}), but got "
            f"{'dtype ' + str(arr.dtype) + ' and ' if not np.issubdtype(arr.dtype, np.integer) else ''}"
            f"shape {arr.shape}."
        )
    if not np.array_equal(np.sort(arr), np.arange(m)):
        raise ValueError(
            f"Expected argument `{name}` to be a permutation of range({m}), but some classes are missing or repeated."
        )
    return arr.astype(np.intp)


# ----------------------------------------------------------------------------------------------- numerics


def _condensed(mat: np.ndarray) -> np.ndarray:
    """Upper triangle (k = 1) in scipy's condensed order (a new array)."""
    return squareform(np.ascontiguousarray(mat), checks=False).astype(np.float64, copy=False)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-d vectors, NaN if either is constant."""
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def _centred_moments(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and the sums of squared and cubed deviations from it, chunk by chunk (the chunks stay in cache)."""
    mean = float(values.sum()) / values.size
    s2 = s3 = 0.0
    buf = np.empty(min(values.size, _CHUNK))
    sq = np.empty_like(buf)
    for start in range(0, values.size, _CHUNK):
        chunk = values[start : start + _CHUNK]
        c = np.subtract(chunk, mean, out=buf[: chunk.size])
        c2 = np.multiply(c, c, out=sq[: chunk.size])
        s2 += float(c2.sum())
        s3 += float(np.dot(c2, c))
    return mean, s2, s3


def _moments_to_stats(n: int, mean: float, s2: float, s3: float) -> tuple[float, float, float]:
    """Mean, standard deviation and skewness from centred sums."""
    std = math.sqrt(max(s2 / n, 0.0))
    skew = (s3 / n) / std**3 if std > 0 else float("nan")
    return mean, std, skew


def _offdiag_pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the off-diagonal values of two symmetric matrices."""
    return _pearson(_condensed(a), _condensed(b))


def _row_distances(sim: np.ndarray) -> np.ndarray:
    """Square Euclidean distances between the rows of ``sim`` (via one matrix product)."""
    gram = sim @ sim.T
    sq = np.diagonal(gram).copy()
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2, out=d2)


class _Distances:
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
        if _kernels.available():
            self.mean, self.s2, s3, top = _kernels.upper_moments(sim)
        else:
            pairs = _condensed(sim)  # similarities, each pair once
            self.mean, self.s2, s3 = _centred_moments(pairs)
            top = float(pairs.max())
            del pairs
        self.moments = _moments_to_stats(self.n_pairs, self.mean, self.s2, s3)
        self.square = _row_distances(sim) if distance == "rows" else None
        self.linear = self.square is None and not self.euclid and top <= 1.0
        self._condensed: np.ndarray | None = None

    @property
    def condensed(self) -> np.ndarray:
        """The condensed distance vector of scipy, made on first use."""
        if self._condensed is None:
            self._condensed = (
                _condensed(self.square) if self.square is not None else self._transform(_condensed(self.sim))
            )
        return self._condensed

    def linkage(self, method: str) -> np.ndarray:
        """The scipy linkage matrix of the distances.

        For the nearest-neighbour chain methods it comes from the compiled kernel (:mod:`._kernels`: equal to
        scipy's, faster, and without holding the GIL), on a square matrix of the distances made straight from the
        similarity (or a copy of the row distances): the condensed vector is not made at all.
        """
        if not (method in _kernels.NN_CHAIN_METHODS and _kernels.available()):
            return scipy_linkage(self.condensed, method=method)
        if self.square is not None:
            square = self.square.copy()
        elif self.linear:
            square = _kernels.one_minus(self.sim)
        else:
            square = self._transform(self.sim.copy())
            _kernels.mirror_upper(square)
        return _kernels.nn_chain_linkage(square, method)

    def _transform(self, s: np.ndarray) -> np.ndarray:
        """The distances of similarities ``s``, computed in place (``s`` is overwritten)."""
        d = np.subtract(1.0, s, out=s)
        np.maximum(d, 0.0, out=d)
        if self.euclid:
            np.sqrt(np.multiply(d, 2.0, out=d), out=d)
        return d

    def rows(self, idx: np.ndarray) -> np.ndarray:
        if self.square is not None:
            return self.square[idx]
        d = self._transform(self.sim[idx])  # a copy: fancy indexing
        d[np.arange(len(idx)), idx] = 0.0
        return d

    def cophenetic_corr(self, z: np.ndarray, coph_dot_d: float) -> float:
        """Pearson correlation of the cophenetic distances with the distances, given the sum of their products."""
        n = self.n_pairs
        sizes = _child_sizes(z)
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


# ----------------------------------------------------------------------------------------------- trees


def _children(z: np.ndarray) -> np.ndarray:
    return z[:, :2].astype(np.intp)


def _child_sizes(z: np.ndarray) -> np.ndarray:
    """Number of classes under each of the two children of every merge, ``(m - 1, 2)``."""
    m = z.shape[0] + 1
    kids = _children(z)
    node_size = np.concatenate([np.ones(m), z[:, 3]])
    return node_size[kids]


def _merge_ranges(z: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each merge sits along a leaf order of its tree.

    ``[start, split)`` holds the classes of its first child along the order, ``[split, end)`` those of the second.
    """
    if _kernels.available():
        return _kernels.merge_ranges(_children(z), order)
    m = order.shape[0]
    pos = np.empty(m, dtype=np.intp)
    pos[order] = np.arange(m)
    start: list[int] = pos.tolist() + [0] * (m - 1)
    end: list[int] = (pos + 1).tolist() + [0] * (m - 1)
    split = [0] * (m - 1)
    for r, (a, b) in enumerate(_children(z).tolist()):
        v = m + r
        if start[a] < start[b]:
            start[v], split[r], end[v] = start[a], start[b], end[b]
        else:
            start[v], split[r], end[v] = start[b], start[a], end[a]
    return np.asarray(start[m:]), np.asarray(split), np.asarray(end[m:])


def _gap_heights(z: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Cophenetic distance between consecutive classes along the leaf order (``m - 1`` values).

    Each gap between neighbours along the order sits under exactly one merge, so cutting the tree at height ``t``
    puts a group boundary exactly at the gaps higher than ``t``.
    """
    gap = np.empty(z.shape[0])
    gap[split - 1] = z[:, 2]
    return gap


def _merge_cross_sums(
    sums: _BlockSums, order: np.ndarray, ranges: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray | None:
    """Sum of similarity between the two children of every merge (``None`` when a fine cluster is too large).

    A merge above the fine cut joins whole fine clusters: its sum is a rectangle of the fine block sums (a 2-d
    prefix sum). A merge inside a fine cluster is a rectangle of that cluster's own diagonal block, in leaf order.
    So no pass over all pairs is needed when the fine clusters are small.
    """
    assert sums.fine is not None
    start, split, end = ranges
    m = order.shape[0]
    fine_pos = sums.fine[order]  # fine clusters are numbered along the order
    n_fine = sums.fine_sizes.shape[0]
    bounds = np.searchsorted(fine_pos, np.arange(n_fine + 1))
    if float(np.square(np.diff(bounds).astype(np.float64)).sum()) > m * m / 8:
        return None
    cross = np.empty(start.shape[0])
    above = fine_pos[start] != fine_pos[end - 1]
    prefix = np.zeros((n_fine + 1, n_fine + 1))
    np.cumsum(np.cumsum(sums.fine_block, axis=0), axis=1, out=prefix[1:, 1:])
    a, b, c = fine_pos[start[above]], fine_pos[split[above]], fine_pos[end[above] - 1] + 1
    cross[above] = prefix[b, c] - prefix[a, c] - prefix[b, b] + prefix[a, b]
    inside = np.nonzero(~above)[0]
    owner = fine_pos[start[inside]]
    by_owner = np.argsort(owner, kind="stable")
    inside, owner = inside[by_owner], owner[by_owner]
    cuts = np.searchsorted(owner, np.arange(n_fine + 1))
    for f in np.nonzero(np.diff(cuts))[0]:
        idx = inside[cuts[f] : cuts[f + 1]]
        lo = bounds[f]
        members = order[lo : bounds[f + 1]]
        local = np.zeros((members.shape[0] + 1, members.shape[0] + 1))
        np.cumsum(np.cumsum(sums.sim[np.ix_(members, members)], axis=0), axis=1, out=local[1:, 1:])
        a, b, c = start[idx] - lo, split[idx] - lo, end[idx] - lo
        cross[idx] = local[b, c] - local[a, c] - local[b, b] + local[a, b]
    return cross


def _maxclust_heights(z: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """The cut height that ``fcluster(z, k, "maxclust")`` uses for each ``k < m``, for a monotone tree.

    It is the lowest merge height ``t`` at which at most ``k`` groups remain, ``1 + #(heights > t) <= k``; so ties
    can leave fewer than ``k`` groups, as in scipy.
    """
    heights = np.sort(z[:, 2])
    remaining = heights.shape[0] + 1 - np.searchsorted(heights, heights, side="right")  # non-increasing
    first = np.searchsorted(-remaining, -ks, side="left")
    return heights[first]


def _leaf_order(z: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """Leaf order of a linkage, computed iteratively.

    With ``keys`` (one per leaf), the child with the smaller mean key comes first at each node.
    """
    m = z.shape[0] + 1
    kids = _children(z)
    if _kernels.available():
        return _kernels.leaf_order(kids, keys)
    if keys is None:
        return leaves_list(z).astype(np.intp)
    total = np.zeros(2 * m - 1)
    count = np.zeros(2 * m - 1)
    total[:m] = keys
    count[:m] = 1
    for i, (a, b) in enumerate(kids):
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
        a, b = kids[node - m]
        if mean[a] > mean[b]:
            a, b = b, a
        stack.append(b)
        stack.append(a)
    return np.asarray(out, dtype=np.intp)


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
    linkage = np.asarray(linkage)
    if linkage.ndim != 2 or linkage.shape[0] < 1 or linkage.shape[1] != 4:
        raise ValueError(
            f"Expected argument `linkage` to be a scipy linkage matrix of shape (m - 1, 4), but got shape "
            f"{linkage.shape}. Pass `result.linkage` or the output of `scipy.cluster.hierarchy.linkage`."
        )
    m = linkage.shape[0] + 1
    kids = np.nan_to_num(linkage[:, :2], nan=-1.0, posinf=-1.0, neginf=-1.0).astype(np.intp)
    formed = m + np.arange(m - 1)[:, None]  # merge r may join leaves and the clusters of merges before it
    if (kids < 0).any() or (kids >= formed).any() or np.unique(kids).size != kids.size:
        raise ValueError(
            "Expected argument `linkage` to be a tree in scipy's format (each merge joins two clusters formed before "
            "it, and each cluster is merged once), but it is not. Pass `result.linkage` or the output of "
            "`scipy.cluster.hierarchy.linkage`."
        )
    prev = _check_order(previous_order, m, "previous_order")
    position = np.empty(m)
    position[prev] = np.arange(m)
    return _leaf_order(linkage, position)


def _relabel_by_order(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Relabel 0..k-1 by first appearance along ``order``."""
    present, first = np.unique(labels[order], return_index=True)
    mapping = np.zeros(int(labels.max()) + 1, dtype=np.intp)
    mapping[present[np.argsort(first)]] = np.arange(present.shape[0])
    return mapping[labels]


def _cut(z: np.ndarray, k: int) -> np.ndarray:
    return fcluster(z, k, criterion="maxclust").astype(np.intp) - 1


class _Cuts:
    """Flat cuts of a linkage, as ``fcluster``'s ``"maxclust"`` and ``"distance"`` criteria make them.

    For a monotone tree a cut at height ``t`` puts a group boundary exactly at the gaps between neighbours along the
    leaf order that are higher than ``t``: an ``O(m)`` cumulative sum, with labels numbered along the order (and
    without scipy's validation of the tree at every call). Other trees go through ``fcluster``.
    """

    def __init__(self, z: np.ndarray, order: np.ndarray) -> None:
        self.z = z
        self.order = order
        self.monotone = bool(np.all(z[1:, 2] >= z[:-1, 2]))
        self.ranges = _merge_ranges(z, order) if self.monotone else None
        self.gaps = _gap_heights(z, self.ranges[1]) if self.ranges is not None else None

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
            return _cut(self.z, k)
        m = self.order.shape[0]
        return self.at_height(-np.inf if k >= m else float(_maxclust_heights(self.z, np.array([k]))[0]))


def _silhouette_rows(m: int) -> np.ndarray:
    """The classes whose silhouettes are averaged: all, or 1,000 evenly spaced ones for large ``m``."""
    return np.arange(m) if m <= _SILHOUETTE_SAMPLE else np.linspace(0, m - 1, _SILHOUETTE_SAMPLE).astype(np.intp)


def _silhouettes_nested(
    sums: _BlockSums, gaps: np.ndarray, z: np.ndarray, order: np.ndarray, ks: range
) -> dict[int, float]:
    """Mean silhouette of every cut into ``k`` groups at once, from the sums over the clusters of a finer cut.

    For a monotone tree and the distance ``1 - s``: every cut nests in the fine one, and each of its groups is a
    run of consecutive fine clusters along the leaf order; so the distance sums of a class to the groups of every
    cut are differences of one cumulative sum over the fine clusters. Same values as :func:`_silhouettes_dense`.
    """
    assert sums.fine is not None and sums.rows is not None
    fine, sizes_f = sums.fine, sums.fine_sizes
    n_fine = sizes_f.shape[0]
    rows = _silhouette_rows(sums.sim.shape[0])
    # distance sums of each fine cluster to the sample classes (fine x rows): |c| - sum of similarities, without the
    # class itself; everything below is laid out with the sample classes along the last axis, so gathers copy rows
    n = rows.shape[0]
    cols = np.arange(n)
    dfine = sizes_f[:, None] - (sums.rows if n == sums.sim.shape[0] else sums.rows[:, rows])
    dfine[fine[rows], cols] -= 1.0 - sums.diag[rows]
    cum = np.zeros((n_fine + 1, n))
    np.cumsum(dfine, axis=0, out=cum[1:])
    size_cum = np.concatenate([[0.0], np.cumsum(sizes_f)])
    # the height of the gap in front of each fine cluster (fine clusters are numbered along the order)
    first = np.searchsorted(fine[order], np.arange(n_fine))
    gap = gaps[first[1:] - 1]
    k_arr = np.asarray(list(ks))
    starts_mask = np.ones((k_arr.shape[0], n_fine), dtype=bool)
    starts_mask[:, 1:] = gap[None, :] > _maxclust_heights(z, k_arr)[:, None]
    if _kernels.available():
        score, n_seg = _kernels.nested_silhouettes(cum, size_cum, starts_mask, fine[rows])
        return {int(k): float(score[i]) for i, k in enumerate(k_arr) if n_seg[i] >= 2}
    seg_of_fine = np.cumsum(starts_mask, axis=1) - 1  # group of each fine cluster, per cut
    n_seg = seg_of_fine[:, -1] + 1
    offsets = np.concatenate([[0], np.cumsum(n_seg)[:-1]])
    starts = np.nonzero(starts_mask)[1]
    ends = np.append(starts[1:], n_fine)
    ends[offsets + n_seg - 1] = n_fine
    # the distinct groups over all cuts (the top of the tree: about 2 * max(ks) of them)
    uniq, seg_u = np.unique(starts * (n_fine + 1) + ends, return_inverse=True)
    u_start, u_end = uniq // (n_fine + 1), uniq % (n_fine + 1)
    u_sums = cum[u_end] - cum[u_start]  # (distinct groups, rows)
    u_sizes = size_cum[u_end] - size_cum[u_start]
    u_means = u_sums / u_sizes[:, None]
    own = seg_u[(seg_of_fine + offsets[:, None])[:, fine[rows]]]  # (cuts, rows): the class's own group
    own_size = u_sizes[own]
    a = u_sums[own, cols] / np.maximum(own_size - 1, 1)
    # b, the nearest other group, cut after cut: each cut refines the previous one, and a group's mean distance is
    # at least the smallest of its parts', so b only needs the groups that are new in the cut
    b = np.empty((k_arr.shape[0], n))
    seen: set[int] = set()
    current = np.full(n, np.inf)
    for i in range(k_arr.shape[0]):
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
    score = sil.mean(axis=1)
    return {int(k): float(score[i]) for i, k in enumerate(k_arr) if n_seg[i] >= 2}


def _silhouettes_dense(dist: _Distances, cuts: _Cuts, ks: range) -> dict[int, float]:
    """Mean silhouette of the cuts into k groups, from distance rows (any distance, any tree)."""
    m = dist.sim.shape[0]
    rows = _silhouette_rows(m)
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


# ----------------------------------------------------------------------------------------------- agreement


def adjusted_rand_index(labels_a: Any, labels_b: Any) -> float:
    """Adjusted Rand index of two flat groupings (1 for identical partitions, about 0 for random ones).

    Args:
        labels_a: a label per class.
        labels_b: a label per class, same length.

    Returns:
        The adjusted Rand index (1.0 when both groupings put all classes in one group, or each in its own).

    Example:
        >>> adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7])
        1.0
    """
    a = np.unique(np.asarray(labels_a), return_inverse=True)[1].ravel()
    b = np.unique(np.asarray(labels_b), return_inverse=True)[1].ravel()
    if a.shape != b.shape:
        raise ValueError(
            f"Expected the two groupings to label the same classes, but got {a.shape[0]} and {b.shape[0]} labels."
        )
    n = a.shape[0]
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def comb2(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index = comb2(table)
    sum_a = comb2(table.sum(axis=1))
    sum_b = comb2(table.sum(axis=0))
    total = n * (n - 1) / 2
    expected = sum_a * sum_b / total if total else 0.0
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def compare_structures(current: StructureResult, previous: StructureResult) -> dict[str, float]:
    """Change between two analyses of the same classes (e.g. consecutive epochs, or two runs).

    Args:
        current: the newer analysis.
        previous: the earlier one.

    Returns:
        ``drift`` (1 - Pearson correlation of the two matrices' off-diagonal values), ``group_ari`` (adjusted
        Rand index of the groupings) and ``order_distance`` (mean absolute change of a class's position along the
        order, as a fraction of ``m``).

    Raises:
        ValueError: if the two analyses have different numbers of classes.
    """
    if current.num_classes != previous.num_classes:
        raise ValueError(
            f"Expected both analyses to cover the same classes, but got {current.num_classes} and "
            f"{previous.num_classes} classes."
        )
    m = current.num_classes
    pos_now = np.empty(m)
    pos_now[current.order] = np.arange(m)
    pos_prev = np.empty(m)
    pos_prev[previous.order] = np.arange(m)
    return {
        "drift": 1.0 - _offdiag_pearson(current.similarity.astype(np.float64), previous.similarity.astype(np.float64)),
        "group_ari": adjusted_rand_index(current.groups, previous.groups),
        "order_distance": float(np.abs(pos_now - pos_prev).mean() / m),
    }


def check_taxonomy(taxonomy: Any, m: int, class_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Validate a taxonomy for ``m`` classes and return its levels (label arrays, coarsest first).

    Raises:
        ValueError: if a level does not give one label per class, or a dict taxonomy misses class names.
    """
    names = list(class_names) if class_names is not None else [str(i) for i in range(m)]
    return _taxonomy_levels(taxonomy, m, names)


def _taxonomy_levels(taxonomy: Any, m: int, class_names: Sequence[str]) -> list[np.ndarray]:
    """Normalise a taxonomy to a list of label arrays, coarsest level first."""
    if isinstance(taxonomy, dict):
        levels = _levels_from_tree(taxonomy, class_names)
    else:
        seq = list(taxonomy)
        if all(np.ndim(x) == 0 for x in seq):
            levels = [seq]
        else:
            levels = [list(level) if np.ndim(level) == 1 else [level] for level in seq]
    out = []
    for i, level in enumerate(levels):
        if len(level) != m:
            raise ValueError(
                f"Expected argument `taxonomy` to give one label per class ({m}) at every level, but level {i} has "
                f"{len(level)} labels. Pass a label per class, a list of such lists (coarsest first), or a nested "
                "dict whose leaves are class names."
            )
        out.append(np.unique(np.asarray([str(x) for x in level]), return_inverse=True)[1].ravel())
    return out


def _levels_from_tree(tree: dict[str, Any], class_names: Sequence[str]) -> list[list[str]]:
    """Turn ``{"indoor": {"kitchen-like": ["kitchen", ...]}, ...}`` into per-class label lists."""
    paths: dict[str, list[str]] = {}
    stack: list[tuple[list[str], Any]] = [([], tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                stack.append(([*path, str(key)], child))
        else:
            for leaf in node:
                paths[str(leaf)] = path
    missing = [n for n in class_names if n not in paths]
    if missing:
        raise ValueError(
            f"Expected argument `taxonomy` to place every class, but {len(missing)} class names are not leaves of "
            f"the tree, e.g. {missing[:5]}. Add them, or pass `class_names=` that match the tree's leaves."
        )
    depth = max(len(p) for p in paths.values())
    levels = []
    for d in range(depth):
        levels.append(["/".join(paths[n][: d + 1]) for n in class_names])
    return levels


def taxonomy_agreement(
    linkage: np.ndarray, taxonomy: Any, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """How well a learned tree matches a known taxonomy (seed: Kim et al., 2023).

    Args:
        linkage: scipy linkage matrix over ``m`` classes.
        taxonomy: a label per class; or a list of such label lists, coarsest level first; or a nested dict whose
            leaves are lists of class names (needs ``class_names``).
        class_names: the class names, for a dict taxonomy.

    Returns:
        ``taxonomy_ari``: adjusted Rand index between the tree cut into as many groups as the taxonomy's top level
        has, and that top level; ``taxonomy_tree_corr``: Pearson correlation between the tree's cophenetic
        distances and the taxonomy's tree distances (the number of levels below the deepest common ancestor).
    """
    m = linkage.shape[0] + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(m)]
    levels = _taxonomy_levels(taxonomy, m, names)
    top = levels[0]
    k = int(top.max()) + 1
    ari = adjusted_rand_index(_cut(linkage, k), top) if k >= 2 else float("nan")
    coph = cophenet(linkage)
    tax = np.zeros_like(coph)
    for level in levels:
        lab = level.astype(np.float64)
        differ = np.abs(_condensed(lab[:, None] - lab[None, :]))
        tax += differ > 0
    return {"taxonomy_ari": ari, "taxonomy_tree_corr": _pearson(coph, tax)}


# ----------------------------------------------------------------------------------------------- groups


def _cluster_rows(sim: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row sums per cluster ``(k, m)`` (row ``c`` sums the rows of cluster ``c``) and the ``(k, k)`` block sums.

    A sparse indicator product: one pass over ``sim`` whatever ``k`` is.
    """
    if _kernels.available():
        return _kernels.cluster_rows(sim, labels, k)
    m = sim.shape[0]
    indicator = csr_matrix((np.ones(m), (labels, np.arange(m))), shape=(k, m))
    rows = np.asarray(indicator @ sim)
    block = np.asarray(indicator @ np.ascontiguousarray(rows.T)).T
    return rows, block


class _BlockSums:
    """Sums of similarity between the groups of flat partitions of the classes.

    With ``fine``, a partition that the coarser ones nest in (the cuts of a monotone tree), the sums are computed
    once for ``fine`` and each nested partition aggregates them in ``O(k_fine^2)``; other partitions cost one pass.
    """

    def __init__(self, sim: np.ndarray, fine: np.ndarray | None = None) -> None:
        self.sim = sim
        self.diag = np.diagonal(sim)
        self.fine = fine
        self.rows: np.ndarray | None = None
        if fine is not None:
            n_fine = int(fine.max()) + 1
            self.rows, self.fine_block = _cluster_rows(sim, fine, n_fine)
            self.fine_sizes = np.bincount(fine, minlength=n_fine).astype(np.float64)
            self.fine_diag = np.bincount(fine, weights=self.diag, minlength=n_fine)

    def blocks(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block sums ``(k, k)`` (diagonal included), group sizes and the sums of the diagonal per group."""
        k = int(labels.max()) + 1
        if self.fine is not None:
            n_fine = self.fine_sizes.shape[0]
            parent = np.zeros(n_fine, dtype=np.intp)
            parent[self.fine] = labels
            if np.array_equal(parent[self.fine], labels):
                if _kernels.available():  # O(n_fine^2); the one-hot products cost O(n_fine^2 k)
                    block = _kernels.aggregate_blocks(self.fine_block, parent, k)
                else:
                    agg = np.zeros((n_fine, k))
                    agg[np.arange(n_fine), parent] = 1.0
                    block = agg.T @ self.fine_block @ agg
                sizes = np.bincount(parent, weights=self.fine_sizes, minlength=k)
                return block, sizes, np.bincount(parent, weights=self.fine_diag, minlength=k)
        _, block = _cluster_rows(self.sim, labels, k)
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        return block, sizes, np.bincount(labels, weights=self.diag, minlength=k)


def _summaries(
    block_sums: _BlockSums, labels: np.ndarray, order: np.ndarray, names: Sequence[str]
) -> tuple[tuple[GroupSummary, ...], float, float]:
    k = int(labels.max()) + 1
    sums, sizes, diag = block_sums.blocks(labels)
    within_sum = np.diagonal(sums) - diag
    within_pairs = sizes * (sizes - 1)
    total_row = sums.sum(axis=1)
    m = labels.shape[0]
    # the classes of each group along the order: a stable sort of the order by group
    along = order[np.argsort(labels[order], kind="stable")].tolist()
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp).tolist()
    out = []
    for g in range(k):
        members = along[bounds[g] : bounds[g + 1]]
        cohesion = within_sum[g] / within_pairs[g] if within_pairs[g] > 0 else float("nan")
        outside = sizes[g] * (m - sizes[g])
        separation = (total_row[g] - sums[g, g]) / outside if outside > 0 else float("nan")
        between = sums[g] / (sizes[g] * sizes)
        between[g] = -np.inf
        nearest = int(np.argmax(between)) if k > 1 else None
        out.append(
            GroupSummary(
                group=g,
                members=tuple(members),
                names=tuple(names[i] for i in members),
                size=int(sizes[g]),
                cohesion=float(cohesion),
                separation=float(separation),
                nearest=nearest,
                nearest_similarity=float(between[nearest]) if nearest is not None else float("nan"),
            )
        )
    pairs_within = float(within_pairs.sum())
    pairs_between = float(m * (m - 1) - pairs_within)
    mean_within = float(within_sum.sum() / pairs_within) if pairs_within > 0 else float("nan")
    mean_between = float((sums.sum() - np.diagonal(sums).sum()) / pairs_between) if pairs_between > 0 else float("nan")
    return tuple(out), mean_within, mean_between


def _split_groups(
    block_sums: _BlockSums, cuts: _Cuts, labels: np.ndarray, k: int, cohesion: np.ndarray, ratio: float, limit: int
) -> tuple[SplitGroup, ...]:
    """Dense off-diagonal blocks.

    Sub-blocks (of a finer cut of the tree) in different groups that are about as similar to each other as the
    classes within their own groups are.
    """
    k_fine = _split_fine_k(k, labels.shape[0])
    if k < 2 or k_fine <= k:
        return ()
    fine = cuts.into(k_fine)
    n_fine = int(fine.max()) + 1
    sums, sizes, _ = block_sums.blocks(fine)
    parent = np.zeros(n_fine, dtype=np.intp)
    parent[fine] = labels
    between = sums / np.maximum(sizes[:, None] * sizes[None, :], 1)
    group_cohesion = cohesion[parent]
    own = 0.5 * (group_cohesion[:, None] + group_cohesion[None, :])
    with np.errstate(invalid="ignore"):
        ok = (
            (parent[:, None] != parent[None, :])
            & (sizes[:, None] >= 2)
            & (sizes[None, :] >= 2)
            & (own > 0)
            & (between > 0)
            & (between >= ratio * own)
        )
    ok = np.triu(ok, 1)
    found = [(between[p, q] / own[p, q], p, q, between[p, q], own[p, q]) for p, q in zip(*np.nonzero(ok))]
    found.sort(key=lambda t: -t[0])
    out = []
    for _, p, q, sim_pq, own_pq in found[:limit]:
        a, b = (p, q) if parent[p] < parent[q] else (q, p)
        out.append(
            SplitGroup(
                groups=(int(parent[a]), int(parent[b])),
                members=(tuple(np.nonzero(fine == a)[0].tolist()), tuple(np.nonzero(fine == b)[0].tolist())),
                similarity=float(sim_pq),
                cohesion=float(own_pq),
            )
        )
    return tuple(out)


def _split_fine_k(k: int, m: int) -> int:
    """Number of sub-blocks that split groups are looked for in: a cut into about ``4 k`` groups."""
    return min(max(4 * k, k + 2), m // 2)


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


def _fcm_sizes(n: int) -> list[int]:
    """Numbers of fuzzy clusters tried on ``n`` rows: those of ``_FCM_CLUSTERS`` up to ``n // 2`` (maybe none).

    Roughly doubling, so that one of them has about one cluster per failed group plus one for the rest, whatever the
    number of failed groups (up to 16).
    """
    return [c for c in _FCM_CLUSTERS if c <= n // 2]


def _plus_plus_seeds(x: np.ndarray, sq_rows: np.ndarray, runs: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """``c`` rows of ``x`` chosen k-means++ style for each ``c`` in ``runs``, all runs at once (centres stacked).

    Each next centre of a run is a row drawn with probability proportional to its squared distance to the nearest
    centre the run has so far (random memberships would start every centre at the mean of all rows, a fixed point of
    fuzzy c-means in many dimensions). Step ``j`` draws the ``j``-th centre of every run that has one: one matrix
    product per step instead of one per centre.
    """
    m = x.shape[0]
    sizes = np.asarray(runs)
    picks = np.zeros((len(runs), int(sizes.max())), dtype=np.intp)
    picks[:, 0] = rng.integers(0, m, len(runs))
    if _kernels.available():  # the same float32 operations, with no temporaries and no Python-level steps per run
        nearest = np.empty((len(runs), m), dtype=x.dtype)
        _kernels.seed_update(nearest, np.arange(len(runs)), x[picks[:, 0]] @ x.T, sq_rows, picks[:, 0], True)
        for j in range(1, picks.shape[1]):
            running = np.nonzero(sizes > j)[0]
            chosen = _kernels.seed_pick(nearest, running, rng.random(running.shape[0]))
            flat = chosen < 0
            if flat.any():  # all rows coincide with the centres so far
                chosen[flat] = rng.integers(0, m, int(flat.sum()))
            picks[running, j] = chosen
            if j + 1 < picks.shape[1]:
                _kernels.seed_update(nearest, running, x[chosen] @ x.T, sq_rows, chosen, False)
        return np.concatenate([x[picks[r, :c]] for r, c in enumerate(runs)])
    nearest = np.maximum(sq_rows[None, :] + sq_rows[picks[:, 0], None] - 2.0 * (x[picks[:, 0]] @ x.T), 0.0)
    for j in range(1, picks.shape[1]):
        active = sizes > j
        near = nearest[active]  # (runs still drawing, m)
        cum = np.cumsum(near, axis=1)
        draw = rng.random(near.shape[0]) * cum[:, -1]
        chosen = np.minimum(np.count_nonzero(cum <= draw[:, None], axis=1), m - 1)  # searchsorted, side="right"
        flat = cum[:, -1] <= 0
        if flat.any():  # all rows coincide with the centres so far
            chosen[flat] = rng.integers(0, m, int(flat.sum()))
        picks[active, j] = chosen
        d = sq_rows[None, :] + sq_rows[chosen, None] - 2.0 * (x[chosen] @ x.T)
        nearest[active] = np.minimum(near, np.maximum(d, 0.0))
    return np.concatenate([x[picks[r, :c]] for r, c in enumerate(runs)])


def _fuzzy_cmeans(
    x: np.ndarray, sizes: Sequence[int], seed: int, restarts: int | None = None, iters: int = 60
) -> list[np.ndarray]:
    """Fuzzy c-means memberships (m x c) of the rows of x for each ``c`` in ``sizes``, with fuzzifier 1.5.

    Each is the best of a few seeded restarts (lowest objective). Memberships are ``u_ic ∝ d_ic^(-2 / (1.5 - 1))``,
    i.e. ``(1 / d_ic^2)^2``; centres are the means of the rows weighted by ``u^1.5``. All the runs (every ``c``,
    every restart) advance together as column blocks of one ``(m, sum c * restarts)`` problem, in place: one matrix
    product and a few array operations per iteration instead of a Python loop per run.
    """
    restarts = _FCM_RESTARTS if restarts is None else restarts
    rng = np.random.default_rng(seed)
    m = x.shape[0]
    dtype = x.dtype
    sq_rows = np.einsum("ij,ij->i", x, x)[:, None]
    runs = [c for c in sizes for _ in range(restarts)]
    block = np.repeat(np.arange(len(runs)), runs)  # run of each column
    onehot = np.zeros((block.shape[0], len(runs)), dtype)
    onehot[np.arange(block.shape[0]), block] = 1.0
    centres = _plus_plus_seeds(x, sq_rows[:, 0], runs, rng)
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
            done = float(np.abs(w, out=w).max()) < _FCM_TOL
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


def _above_the_noise(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` in its principal directions above a clear edge of the noise, or all of ``x`` without one.

    The residual's dense blocks (failed groups) can stand out as a few strong directions above a bulk of noise
    directions; the noise adds about the same distance to every fuzzy centre and so pulls the memberships towards
    the trivial fixed point (all ``1/c``). The edge is the last drop of the squared singular values by a factor
    ``_GAP_RATIO`` or more, among the directions at least ``_NOISE_FACTOR`` times the median one.
    """
    x64 = x.astype(np.float64)
    evals, evecs = np.linalg.eigh(x64.T @ x64)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    above = evals[:-1] >= _NOISE_FACTOR * np.median(evals)
    with np.errstate(divide="ignore", invalid="ignore"):
        edges = np.nonzero(above & (evals[:-1] >= _GAP_RATIO * evals[1:]))[0]
    if edges.shape[0] == 0:
        return x
    return (x64 @ evecs[:, : edges[-1] + 1]).astype(x.dtype)


def _cross_residuals(
    sim: np.ndarray, labels: np.ndarray, block_mean: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Residuals ``s_ij - mean_block(g_i, g_j)`` of pairs of classes in different groups.

    All of them up to ``_SPREAD_SAMPLE`` pairs of classes, else that many drawn at random (a class, then a class
    outside its group).
    """
    m = sim.shape[0]
    if m * (m - 1) // 2 <= _SPREAD_SAMPLE:
        i, j = np.triu_indices(m, 1)
        cross = labels[i] != labels[j]
        i, j = i[cross], j[cross]
    else:
        by_group = np.argsort(labels, kind="stable")
        sizes = np.bincount(labels)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        i = rng.integers(0, m, _SPREAD_SAMPLE)
        own = labels[i]
        t = np.floor(rng.random(_SPREAD_SAMPLE) * (m - sizes[own])).astype(np.intp)  # a place outside i's group
        t += np.where(t >= starts[own], sizes[own], 0)
        j = by_group[t]
    return sim[i, j] - block_mean[labels[i], labels[j]]


def _residual_pairs(
    sim: np.ndarray, labels: np.ndarray, block_mean: np.ndarray, cut: float, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """The pairs ``i < j`` in different groups with a residual of at least ``cut`` (see ``_kernels.residual_pairs``)."""
    if _kernels.available():
        return _kernels.residual_pairs(sim, labels, block_mean, cut, cap)
    m = sim.shape[0]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    count, top = 0, -math.inf
    for lo in range(0, m, _ROWS_CHUNK):
        hi = min(lo + _ROWS_CHUNK, m)
        res = sim[lo:hi] - block_mean[labels[lo:hi]][:, labels]
        upper_cross = (labels[lo:hi, None] != labels[None, :]) & (np.arange(lo, hi)[:, None] < np.arange(m)[None, :])
        i, j = np.nonzero(upper_cross & (res >= cut))
        count += i.shape[0]
        found.append((i + lo, j, res[i, j]))
        if i.shape[0]:
            top = max(top, float(found[-1][2].max()))
    rows, cols, vals = (np.concatenate(parts)[:cap] for parts in zip(*found))
    return rows.astype(np.intp), cols.astype(np.intp), vals, count, top


def _fuzzy_rows(graph: csr_matrix, seed: int) -> np.ndarray:
    """The rows of the (symmetric) residual graph for fuzzy c-means.

    Dense, or in the graph's dominant ``_SKETCH_DIM``-dimensional subspace for more rows (a random sparse sketch,
    orthonormalised: one step of a randomised range finder); then in its directions above a clear noise edge
    (:func:`_above_the_noise`). No columns when the sketch of the graph vanishes.
    """
    n = graph.shape[0]
    if n <= _SKETCH_DIM:
        rows = graph.toarray().astype(np.float32)
    else:
        rng = np.random.default_rng(seed)
        sketch = csr_matrix(
            (rng.choice(np.array([-1.0, 1.0]), n), (np.arange(n), rng.integers(0, _SKETCH_DIM, n))),
            shape=(n, _SKETCH_DIM),
        )
        basis = _orthonormal_basis(np.asarray((graph @ sketch).todense()))
        if basis.shape[1] == 0:
            return np.zeros((n, 0), dtype=np.float32)
        rows = np.asarray(graph @ basis, dtype=np.float32)
    return _above_the_noise(rows)


def _failed_groups(
    sim: np.ndarray,
    labels: np.ndarray,
    blocks: tuple[np.ndarray, np.ndarray, np.ndarray],
    cohesion: float,
    background: float,
    ratio: float,
    membership: float,
    seed: int,
    limit: int,
) -> tuple[FailedGroup, ...]:
    """Mutually similar classes that the tree scatters over several groups.

    The residual of a pair of classes is their similarity minus the mean similarity of their two groups: what the
    flat groups do not explain. The pairs in different groups whose residual stands out (at least ``cut``, the larger
    of half the way from ``background`` to the failed-group threshold, and the noise level: the residual's robust
    spread, ``1.4826`` times its median absolute deviation, times ``sqrt(2 ln P)`` for ``P`` pairs, the universal
    threshold) form a sparse graph on the classes they touch. Candidates are its connected components and the fuzzy
    clusters (membership above ``membership``) of fuzzy c-means (``c`` in 2, 3, 5, 9, 17, up to half the classes
    touched) on the graph's rows (:func:`_fuzzy_rows`). A candidate is a failed group when its members span two
    groups or more, no group holds more than 3/4 of them, and the mean similarity of members in *different* groups is
    at least ``ratio`` of the way from the mean between-group similarity (``background``) to the mean within-group
    similarity (``cohesion``), their mean residual at least ``cut``: measured from the background, so that a matrix
    with a high similarity everywhere does not make every large set a failed group, and above the noise, so that a
    few chance pairs among millions do not make one either.
    """
    m = sim.shape[0]
    sums, sizes, _ = blocks
    k = sizes.shape[0]
    if k < 2 or m < 6 or not math.isfinite(cohesion) or not cohesion > background:
        return ()
    block_mean = sums / np.outer(sizes, sizes)
    threshold = background + ratio * (cohesion - background)
    rng = np.random.default_rng(seed)
    sample = _cross_residuals(sim, labels, block_mean, rng)
    noise = 1.4826 * float(np.median(np.abs(sample - np.median(sample)))) if sample.shape[0] else 0.0
    cut = max((threshold - background) / 2, noise * math.sqrt(2.0 * math.log(m * (m - 1) / 2)))
    cap = _PAIRS_PER_CLASS * m
    rows, cols, vals, count, top = _residual_pairs(sim, labels, block_mean, cut, cap)
    first = True
    while count > cap:  # more pairs stand out than the graph keeps: raise the cut (a guess from the sample first)
        above = float(np.mean(sample >= cut))
        guess = float(np.quantile(sample, 1.0 - above * cap / (2 * count))) if first and above > 0 else cut
        # halfway to the largest; past it when all the pairs left tie there (then none is kept)
        cut = guess if guess > cut else (cut + top) / 2 if top > cut else float(np.nextafter(top, np.inf))
        first = False
        rows, cols, vals, count, top = _residual_pairs(sim, labels, block_mean, cut, cap)
    active = np.unique(np.concatenate([rows, cols]))
    n = active.shape[0]
    if n < 3:
        return ()
    place = np.zeros(m, dtype=np.intp)
    place[active] = np.arange(n)
    graph = csr_matrix((np.concatenate([vals, vals]), (place[np.r_[rows, cols]], place[np.r_[cols, rows]])), (n, n))
    n_parts, part = connected_components(graph, directed=False)
    candidates = [active[part == p] for p in range(n_parts)]
    fuzzy_rows = _fuzzy_rows(graph, seed) if _fcm_sizes(n) else None
    if fuzzy_rows is not None and fuzzy_rows.shape[1]:
        for u in _fuzzy_cmeans(fuzzy_rows, _fcm_sizes(n), seed):
            candidates.extend(active[u[:, j] >= membership] for j in range(u.shape[1]))
    largest = min(max(m // 2, 3), 4000)

    def accept(members: np.ndarray) -> FailedGroup | None:
        n = len(members)
        if n < 3 or n > largest:
            return None
        spread = np.bincount(labels[members], minlength=k)
        if np.count_nonzero(spread) < 2 or spread.max() > 0.75 * n:
            return None
        lab = labels[members]
        across = lab[:, None] != lab[None, :]
        mean_across = float(sim[np.ix_(members, members)][across].mean())
        if mean_across < threshold or mean_across - float(block_mean[lab[:, None], lab[None, :]][across].mean()) < cut:
            return None
        groups = tuple(int(g) for g in np.nonzero(spread)[0])
        return FailedGroup(members=tuple(members.tolist()), groups=groups, similarity=mean_across)

    out: dict[tuple[int, ...], FailedGroup] = {}
    for members in candidates:
        found = accept(members)
        if found is not None:
            out[found.members] = found
    sets = {key: set(key) for key in out}
    kept = [f for key, f in out.items() if not any(sets[key] < other for other in sets.values())]
    return tuple(sorted(kept, key=lambda f: (-f.similarity, f.members))[:limit])


# ----------------------------------------------------------------------------------------------- analyze


def analyze(
    similarity: Any,
    *,
    method: LinkageMethod = "complete",
    distance: DistanceKind = "correlation",
    clip_negative: bool = False,
    n_groups: int | None = None,
    distance_threshold: float | None = None,
    max_groups: int | None = None,
    optimal_ordering: bool = False,
    order: Any = None,
    class_names: Sequence[str] | None = None,
    previous: StructureResult | None = None,
    taxonomy: Any = None,
    split_ratio: float = 0.5,
    failed_ratio: float = 0.5,
    failed_membership: float = 0.3,
    find_failed: bool = True,
    seed: int = 0,
) -> StructureResult:
    """Order a class-similarity matrix by hierarchical clustering and summarise its groups.

    Args:
        similarity: the ``(m, m)`` similarity matrix (numpy or torch), e.g. from ``ClassSimilarity.compute()``.
        method: linkage method of :func:`scipy.cluster.hierarchy.linkage`: single, complete (the paper's
            default), average, weighted, ward, centroid or median.
        distance: ``"correlation"`` (``1 - r``; ``sqrt(2 (1 - r))`` for ward, centroid, median) or ``"rows"``
            (Euclidean distance between the matrix rows, as the seed notebook).
        clip_negative: set negative similarities to 0 first, as the seed notebook does.
        n_groups: cut the tree into this many flat groups.
        distance_threshold: cut the tree at this height instead (exclusive with ``n_groups``).
        max_groups: largest number of groups tried by the automatic choice (best mean silhouette over
            ``2..max_groups``), used when neither ``n_groups`` nor ``distance_threshold`` is given. Default:
            ``max(30, ceil(sqrt(m)))`` (30 up to 900 classes, 100 at 10,000). A choice at the top of the range
            suggests more groups: raise it.
        optimal_ordering: reorder leaves with scipy's optimal leaf ordering (slow: warns above
            1,000 classes and refuses above 3,000).
        order: an externally given order (e.g. a known taxonomy's) used instead of the tree's leaf order.
        class_names: names of the classes, for summaries.
        previous: the analysis of the previous epoch (or another run): adds ``drift``, ``group_ari`` and
            ``order_distance`` to the metrics and orients the new leaf order to follow the previous one.
        taxonomy: a known structure (see :func:`taxonomy_agreement`): adds ``taxonomy_ari`` and
            ``taxonomy_tree_corr`` to the metrics.
        split_ratio: two sub-blocks (of a cut into ``4 k`` groups) in different groups form a split group when
            their mean similarity is at least this fraction of the mean cohesion of their two groups.
        failed_ratio: a candidate spread over several groups is a failed group when the mean similarity of its
            members that sit in different groups is at least this fraction of the way from the mean between-group
            similarity to the mean within-group similarity (and their mean residual stands out from the noise).
        failed_membership: fuzzy membership above which a class belongs to a fuzzy cluster.
        find_failed: look for failed groups: the pairs of classes in different groups whose residual (similarity
            minus the mean similarity of their two groups, i.e. what the tree did not capture) stands out from the
            noise form a sparse graph; its connected components and the fuzzy clusters of fuzzy c-means on its rows
            are the candidates (see the README's "Split and failed groups").
        seed: seed of the fuzzy clustering (the result is deterministic for a seed).

    Returns:
        A :class:`StructureResult`. Its ``metrics`` hold ``cophenetic_corr``, ``n_groups``,
        ``within_minus_between``, ``mean_within``, ``mean_between``, ``offdiag_mean``, ``offdiag_std``,
        ``offdiag_skew``, and, when asked for, ``silhouette``, ``drift``, ``group_ari``, ``order_distance``,
        ``taxonomy_ari`` and ``taxonomy_tree_corr``.

    Raises:
        ValueError: for a matrix that is not square, symmetric and finite with ``m >= 2``; an unknown ``method`` or
            ``distance``; both ``n_groups`` and ``distance_threshold``; ``n_groups`` outside ``1..m``; a bad
            ``order``; ``class_names`` of the wrong length; a ``previous`` result over other classes;
            ``optimal_ordering`` above 3,000 classes; ``failed_ratio`` outside ``(0, 1]`` or ``failed_membership``
            outside ``(0, 1)``.

    Example:
        >>> import numpy as np
        >>> from lightning_classim import analyze
        >>> sim = np.array([[1.0, 0.9, 0.1, 0.0], [0.9, 1.0, 0.0, 0.1], [0.1, 0.0, 1.0, 0.8], [0.0, 0.1, 0.8, 1.0]])
        >>> result = analyze(sim, class_names=["cat", "dog", "car", "bus"])
        >>> result.groups.tolist(), result.order.tolist()
        ([0, 0, 1, 1], [0, 1, 2, 3])
        >>> [g.names for g in result.summary]
        [('cat', 'dog'), ('car', 'bus')]
    """
    _check_choice("method", method, LinkageMethod)
    _check_choice("distance", distance, DistanceKind)
    sim = as_similarity_matrix(similarity)
    m = sim.shape[0]
    check_group_args(n_groups, distance_threshold, max_groups, m)
    _check_fraction("failed_ratio", failed_ratio, 0.5, closed=True)
    _check_fraction("failed_membership", failed_membership, 0.3, closed=False)
    names = _check_names(class_names, m)
    if previous is not None and previous.num_classes != m:
        raise ValueError(
            f"Expected argument `previous` to be an analysis of the same {m} classes, but it has "
            f"{previous.num_classes}. Drop `previous` when the classes change."
        )
    if optimal_ordering and m > OPTIMAL_ORDERING_MAX:
        raise ValueError(
            f"Expected `optimal_ordering=True` only up to {OPTIMAL_ORDERING_MAX} classes, but got {m} "
            "(scipy's optimal leaf ordering took 76 s at 2,622 classes). Use `optimal_ordering=False`."
        )
    if clip_negative:
        sim = np.maximum(sim, 0.0)

    dist = _Distances(sim, distance, method)
    z = dist.linkage(method)
    if optimal_ordering:
        if m > OPTIMAL_ORDERING_WARN:
            warnings.warn(
                f"optimal_ordering=True on {m} classes can take minutes (1 s at 1,000, 76 s at 2,622 classes).",
                UserWarning,
                stacklevel=2,
            )
        z = optimal_leaf_ordering(z, dist.condensed)

    if previous is not None and not optimal_ordering and order is None:
        tree_order = _leaf_order(z, _positions(previous.order))
    else:
        tree_order = _leaf_order(z)
    leaf_order = _check_order(order, m) if order is not None else tree_order
    metrics: dict[str, float] = {}

    # the flat groups; one sparse pass over the matrix sums it over the clusters of a fine cut that the groups, the
    # silhouette cuts and the split-group sub-blocks all nest in (monotone trees)
    auto = n_groups is None and distance_threshold is None
    cuts = _Cuts(z, tree_order)
    if n_groups is not None:
        raw = cuts.into(n_groups)
    elif distance_threshold is not None:
        raw = cuts.at_height(distance_threshold)
    else:
        raw = np.zeros(m, dtype=np.intp)
    ks = range(2, max(2, min(default_max_groups(m) if max_groups is None else max_groups, m - 1)) + 1)
    need = max(ks) if auto else int(raw.max()) + 1
    ranges = cuts.ranges
    fine = cuts.into(max(need, _split_fine_k(need, m))) if ranges is not None else None  # numbered along the order
    block_sums = _BlockSums(sim, fine)

    # cophenetic correlation, when the distance is 1 - s: from the tree and the fine block sums, or from the compiled
    # sums over the tree; else (or without the kernels below 1,500 classes) from all pairs
    cross = None
    if ranges is not None and dist.linear and m >= _TREE_COPHENET_MIN:
        cross = _merge_cross_sums(block_sums, tree_order, ranges)
    if cross is None and ranges is not None and dist.linear and _kernels.available():
        cross = _kernels.merge_cross_sums(sim, tree_order, ranges)
    if cross is not None:
        sizes = _child_sizes(z)
        coph_dot_d = float(z[:, 2] @ (sizes[:, 0] * sizes[:, 1] - cross))
    else:
        coph_dot_d = float(np.dot(cophenet(z), dist.condensed))
    metrics["cophenetic_corr"] = dist.cophenetic_corr(z, coph_dot_d)

    if auto:
        if m < 3:
            scores: dict[int, float] = {}
        elif ranges is not None and dist.linear:
            assert cuts.gaps is not None
            scores = _silhouettes_nested(block_sums, cuts.gaps, z, tree_order, ks)
        else:
            scores = _silhouettes_dense(dist, cuts, ks)
        if scores:
            best = _best_k(scores)
            metrics["silhouette"] = scores[best]
            raw = cuts.into(best)
    labels = raw if leaf_order is tree_order and cuts.monotone else _relabel_by_order(raw, leaf_order)
    k = int(labels.max()) + 1
    notes: list[str] = []
    if (n_groups is not None and k < n_groups) or (auto and m >= 3 and k == 1):
        notes.append(_fewer_groups_note(n_groups, k, z, cuts.monotone, method))
    if not _NOTES_QUIET.get():
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
    summary, mean_within, mean_between = _summaries(block_sums, labels, leaf_order, names)

    mean, std, skew = dist.moments
    metrics.update(
        {
            "n_groups": float(k),
            "mean_within": mean_within,
            "mean_between": mean_between,
            "within_minus_between": mean_within - mean_between,
            "offdiag_mean": mean,
            "offdiag_std": std,
            "offdiag_skew": skew,
        }
    )
    del dist
    cohesions = np.array([g.cohesion for g in summary])
    split = _split_groups(block_sums, cuts, labels, k, cohesions, split_ratio, limit=10)
    sim32 = sim.astype(np.float32)
    failed: tuple[FailedGroup, ...] = ()
    if find_failed and k >= 2:
        failed = _failed_groups(
            sim,
            labels,
            block_sums.blocks(labels),
            mean_within,
            mean_between,
            failed_ratio,
            failed_membership,
            seed,
            limit=10,
        )
    result = StructureResult(
        similarity=sim32,
        order=leaf_order,
        linkage=z,
        groups=labels,
        summary=summary,
        metrics=metrics,
        split_groups=split,
        failed_groups=failed,
        class_names=tuple(names),
        silhouettes=dict(sorted(scores.items())) if auto else {},
        notes=tuple(notes),
    )
    if previous is not None:
        metrics.update(compare_structures(result, previous))
    if taxonomy is not None:
        metrics.update(taxonomy_agreement(z, taxonomy, names))
    return result


_NOTES_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("lightning_classim_notes_quiet", default=False)


@contextlib.contextmanager
def notes_not_warned() -> Iterator[None]:
    """Within this block (in this thread or task), :func:`analyze` keeps its notes in the result without warning.

    For callers that report the notes themselves, such as the callback (once per source, not every epoch).

    Example:
        >>> import numpy as np
        >>> from lightning_classim.analysis import analyze, notes_not_warned
        >>> pairs = np.kron(np.eye(3), np.ones((2, 2))) * 0.8 + np.eye(6) * 0.2  # three equally unlike pairs
        >>> with notes_not_warned():
        ...     result = analyze(pairs, n_groups=2)
        >>> result.n_groups, result.notes[0][:60]
        (1, 'n_groups=2 gave 1 group: 2 merges tie at height 1 and a cut ')
    """
    token = _NOTES_QUIET.set(True)
    try:
        yield
    finally:
        _NOTES_QUIET.reset(token)


def _fewer_groups_note(n_groups: int | None, k: int, z: np.ndarray, monotone: bool, method: str) -> str:
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
    else:
        # a cut at height t gives 1 + (merges above t) groups: the counts a cut can give are these, and m; the merges
        # between k groups and the next count all sit at one height
        heights = z[:, 2]
        counts = np.append(1 + heights.shape[0] - np.searchsorted(heights, np.unique(heights), side="right"), m)
        above = int(counts[counts >= (2 if n_groups is None else n_groups)].min())
        tie = heights[-(above - k)]
        if above == m and k == 1:
            why = (
                f"all {m - 1} merges tie at height {tie:.4g}: a cut gives 1 or {m} groups, nothing between ({as_scipy})"
            )
            fix = (
                "The classes form one chain of equally near neighbours: no single-linkage cut parts it"
                if method == "single"
                else "Every class is equally far from every other: the matrix holds no groups"
            )
        else:
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
                    "; or use method='average': complete linkage ties at the largest distance (e.g. 1 between "
                    "classes that never co-occur)"
                )
    return f"{asked}: {why}. {fix}."


def _best_k(scores: dict[int, float]) -> int:
    """The automatic choice: the best mean silhouette, ties (to 12 decimals) to the smaller number of groups."""
    return max(scores, key=lambda k: (round(scores[k], 12), -k))


def default_max_groups(m: int) -> int:
    """Largest number of groups the automatic choice tries on ``m`` classes when ``max_groups`` is not given.

    ``max(30, ceil(sqrt(m)))``: 30 up to 900 classes, then growing with ``m`` (64 at 4,000, 100 at 10,000), so that the
    automatic choice can find the many groups of many classes (a fixed 30 merged 40 clear groups of 2,000 classes).

    Example:
        >>> from lightning_classim.analysis import default_max_groups
        >>> default_max_groups(100), default_max_groups(1000), default_max_groups(10_000)
        (30, 32, 100)
    """
    return max(30, math.isqrt(max(m - 1, 0)) + 1)


def check_group_args(n_groups: Any, distance_threshold: Any, max_groups: Any, m: int) -> None:
    """Validate the options that choose the flat groups (shared by :func:`analyze` and the callback).

    Raises:
        ValueError: if both ``n_groups`` and ``distance_threshold`` are given, ``n_groups`` is not an int in
            ``1..m`` or ``max_groups`` is neither None nor an int larger than 1.
    """
    if n_groups is not None and distance_threshold is not None:
        raise ValueError(
            f"Expected only one of `n_groups` and `distance_threshold`, but got n_groups={n_groups} and "
            f"distance_threshold={distance_threshold}. Drop one of them."
        )
    if n_groups is not None and (isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= m):
        raise ValueError(f"Expected argument `n_groups` to be an int in 1..{m}, but got {n_groups!r}.")
    if max_groups is not None and (isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 2):
        raise ValueError(
            f"Expected argument `max_groups` to be an int larger than 1 (or None: the default), but got {max_groups!r}."
        )


def _check_fraction(name: str, value: Any, default: float, closed: bool) -> None:
    """``value`` must be a number in ``(0, 1]`` (``closed``) or ``(0, 1)``."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not (0 < value < 1 or (closed and value == 1)):
        interval = "(0, 1]" if closed else "(0, 1)"
        raise ValueError(
            f"Expected argument `{name}` to be a number in {interval}, but got {value!r}. Pass a fraction such as the "
            f"default {default}."
        )


def _positions(order: np.ndarray) -> np.ndarray:
    pos = np.empty(len(order))
    pos[np.asarray(order)] = np.arange(len(order))
    return pos


def _check_names(class_names: Sequence[str] | None, m: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(m)]
    names = [str(n) for n in class_names]
    if len(names) != m:
        raise ValueError(f"Expected argument `class_names` to name all {m} classes, but got {len(names)} names.")
    return names
