"""Structure analysis of a class-similarity matrix: ordering, groups, summaries, and structure metrics.

Everything here runs on the CPU with numpy/scipy, is deterministic (the same input gives the same output), and
works up to tens of thousands of classes: the leaf order comes from :func:`scipy.cluster.hierarchy.leaves_list`
or from an iterative traversal, never from the recursive ``dendrogram()``.

Choices worth knowing:

* Distance. ``distance="correlation"`` uses ``1 - r``; for the methods that assume Euclidean distances (ward,
  centroid, median) it uses ``sqrt(2 (1 - r))``, which is Euclidean for correlations. ``distance="rows"`` is the
  seed notebook's choice: the Euclidean distance between the rows of the matrix.
* Automatic number of groups: the cut of the tree into ``k`` groups, ``k`` in ``2..max_groups``, with the best
  mean silhouette (computed on at most 1,000 evenly spaced classes for large ``m``). Ties go to the smaller ``k``.
* Group labels run ``0..k-1`` in the order in which the groups appear along the leaf order, so group 0 is the
  first block of the heatmap.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster, leaves_list, optimal_leaf_ordering
from scipy.cluster.hierarchy import linkage as scipy_linkage

from lightning_classim._checks import check_choice as _check_choice

LinkageMethod = Literal["single", "complete", "average", "weighted", "ward", "centroid", "median"]
DistanceKind = Literal["correlation", "rows"]
_EUCLIDEAN_METHODS = ("ward", "centroid", "median")

#: Above this many classes, ``optimal_ordering=True`` is refused (it took 76 s at m = 2622 on a 2-core CPU).
OPTIMAL_ORDERING_MAX = 3000
#: Above this many classes, ``optimal_ordering=True`` warns that it will be slow.
OPTIMAL_ORDERING_WARN = 1000
_SILHOUETTE_SAMPLE = 1000
_BLOCK_ROWS = 512

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
    the flat groups, i.e. on the structure that the tree did not capture.

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

    @property
    def num_classes(self) -> int:
        """Number of classes ``m``."""
        return int(self.similarity.shape[0])

    @property
    def n_groups(self) -> int:
        """Number of flat groups."""
        return len(self.summary)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no matrices): metrics, groups, split and failed groups."""
        names = self.class_names
        return {
            "num_classes": self.num_classes,
            "n_groups": self.n_groups,
            "metrics": {k: _json_float(v) for k, v in self.metrics.items()},
            "groups": [g.to_dict() for g in self.summary],
            "split_groups": [s.to_dict(names) for s in self.split_groups],
            "failed_groups": [f.to_dict(names) for f in self.failed_groups],
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
        The matrix as float64 (a copy only if it was not float64 numpy already).

    Raises:
        ValueError: if it is not 2-d and square, has fewer than 2 classes, holds NaN or infinite values, or is not
            symmetric within ``atol``.
    """
    if hasattr(similarity, "detach"):
        similarity = similarity.detach().cpu().double().numpy()
    mat = np.asarray(similarity, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(
            f"Expected argument `{name}` to be a square (m, m) matrix, but got shape {mat.shape}. "
            "Pass the output of `ClassSimilarity.compute()`."
        )
    if mat.shape[0] < 2:
        raise ValueError(f"Expected argument `{name}` to have at least 2 classes, but got shape {mat.shape}.")
    if not np.isfinite(mat).all():
        bad = np.unique(np.nonzero(~np.isfinite(mat))[0])
        raise ValueError(
            f"Expected argument `{name}` to be finite, but rows {bad[:10].tolist()} hold NaN or infinite values. "
            "Compute the matrix with `undefined='zero'` (the default) so that classes with a constant score get 0."
        )
    asym = _max_asymmetry(mat)
    if asym > atol:
        raise ValueError(
            f"Expected argument `{name}` to be symmetric, but it differs from its transpose by up to {asym:.3g} "
            f"(tolerance {atol}). Pass a similarity matrix, or symmetrise it with `(S + S.T) / 2`."
        )
    return mat


def _max_asymmetry(mat: np.ndarray, tile: int = 256) -> float:
    """Max |M - M^T|, tile by tile (a whole-matrix transpose is cache-unfriendly and allocates m^2)."""
    m = mat.shape[0]
    worst = 0.0
    for i in range(0, m, tile):
        for j in range(i, m, tile):
            diff = np.abs(mat[i : i + tile, j : j + tile] - mat[j : j + tile, i : i + tile].T).max()
            worst = max(worst, float(diff))
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
    """Upper triangle (k = 1) in scipy's condensed order, row by row (faster than squareform for large m)."""
    m = mat.shape[0]
    out = np.empty(m * (m - 1) // 2, dtype=np.float64)
    pos = 0
    for i in range(m - 1):
        n = m - 1 - i
        out[pos : pos + n] = mat[i, i + 1 :]
        pos += n
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-d vectors, NaN if either is constant."""
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def _offdiag_moments(mat: np.ndarray) -> tuple[float, float, float]:
    """Mean, standard deviation and skewness of the off-diagonal values (each pair counted once)."""
    m = mat.shape[0]
    count = m * (m - 1)
    diag = np.diagonal(mat)
    s1 = float(mat.sum() - diag.sum())
    mean = s1 / count
    s2 = s3 = 0.0
    for start in range(0, m, _BLOCK_ROWS):
        block = mat[start : start + _BLOCK_ROWS] - mean
        sq = block * block
        s2 += float(sq.sum())
        s3 += float((sq * block).sum())
    d = diag - mean
    s2 -= float((d * d).sum())
    s3 -= float((d * d * d).sum())
    var = s2 / count
    std = math.sqrt(max(var, 0.0))
    skew = (s3 / count) / std**3 if std > 0 else float("nan")
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
    """Distances between classes: the condensed vector for the linkage and rows on demand (for silhouettes)."""

    def __init__(self, sim: np.ndarray, distance: DistanceKind, method: str) -> None:
        self.sim = sim
        self.euclid = method in _EUCLIDEAN_METHODS
        self.square = _row_distances(sim) if distance == "rows" else None
        self.condensed = _condensed(self.square) if self.square is not None else self._from_sim()

    def _transform(self, s: np.ndarray) -> np.ndarray:
        d = np.maximum(1.0 - s, 0.0)
        return np.sqrt(2.0 * d, out=d) if self.euclid else d

    def _from_sim(self) -> np.ndarray:
        m = self.sim.shape[0]
        out = np.empty(m * (m - 1) // 2, dtype=np.float64)
        pos = 0
        for start in range(0, m - 1, _BLOCK_ROWS):
            block = self._transform(self.sim[start : start + _BLOCK_ROWS])
            for r in range(block.shape[0]):
                i = start + r
                n = m - 1 - i
                if n <= 0:
                    break
                out[pos : pos + n] = block[r, i + 1 :]
                pos += n
        return out

    def rows(self, idx: np.ndarray) -> np.ndarray:
        if self.square is not None:
            return self.square[idx]
        d = self._transform(self.sim[idx])
        d[np.arange(len(idx)), idx] = 0.0
        return d


# ----------------------------------------------------------------------------------------------- trees


def _children(z: np.ndarray) -> np.ndarray:
    return z[:, :2].astype(np.intp)


def _leaf_order(z: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """Leaf order of a linkage, computed iteratively.

    With ``keys`` (one per leaf), the child with the smaller mean key comes first at each node.
    """
    m = z.shape[0] + 1
    kids = _children(z)
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

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> z = linkage(np.array([[0.0], [1.0], [10.0], [11.0]]), "complete")
        >>> align_order(z, [3, 2, 1, 0]).tolist()
        [3, 2, 1, 0]
    """
    m = linkage.shape[0] + 1
    prev = _check_order(previous_order, m, "previous_order")
    position = np.empty(m)
    position[prev] = np.arange(m)
    return _leaf_order(linkage, position)


def _relabel_by_order(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Relabel 0..k-1 by first appearance along ``order``."""
    seen: dict[int, int] = {}
    for lab in labels[order]:
        if int(lab) not in seen:
            seen[int(lab)] = len(seen)
    mapping = np.zeros(int(labels.max()) + 1, dtype=np.intp)
    for old, new in seen.items():
        mapping[old] = new
    return mapping[labels]


def _cut(z: np.ndarray, k: int) -> np.ndarray:
    return fcluster(z, k, criterion="maxclust").astype(np.intp) - 1


def _silhouettes(dist: _Distances, z: np.ndarray, ks: range) -> dict[int, float]:
    """Mean silhouette of the cuts into k groups (on evenly spaced sample classes when m is large)."""
    m = dist.sim.shape[0]
    rows = np.arange(m) if m <= _SILHOUETTE_SAMPLE else np.linspace(0, m - 1, _SILHOUETTE_SAMPLE).astype(np.intp)
    kmax = max(ks)
    fine = _cut(z, kmax)
    n_fine = int(fine.max()) + 1
    onehot = np.zeros((m, n_fine))
    onehot[np.arange(m), fine] = 1.0
    drows = dist.rows(rows)
    fine_sums = drows @ onehot  # (rows, n_fine)
    out: dict[int, float] = {}
    for k in ks:
        labels = _cut(z, k)
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


def _group_blocks(sim: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of similarity between groups (k x k, diagonal included) and group sizes."""
    onehot = np.zeros((sim.shape[0], k))
    onehot[np.arange(sim.shape[0]), labels] = 1.0
    sums = onehot.T @ (sim @ onehot)
    return sums, onehot.sum(axis=0)


def _summaries(
    sim: np.ndarray, labels: np.ndarray, order: np.ndarray, names: Sequence[str]
) -> tuple[tuple[GroupSummary, ...], float, float]:
    k = int(labels.max()) + 1
    sums, sizes = _group_blocks(sim, labels, k)
    diag = np.bincount(labels, weights=np.diagonal(sim), minlength=k)
    within_sum = np.diagonal(sums) - diag
    within_pairs = sizes * (sizes - 1)
    total_row = sums.sum(axis=1)
    m = sim.shape[0]
    position = np.empty(m, dtype=np.intp)
    position[order] = np.arange(m)
    out = []
    for g in range(k):
        members = np.nonzero(labels == g)[0]
        members = members[np.argsort(position[members])]
        cohesion = within_sum[g] / within_pairs[g] if within_pairs[g] > 0 else float("nan")
        outside = sizes[g] * (m - sizes[g])
        separation = (total_row[g] - sums[g, g]) / outside if outside > 0 else float("nan")
        between = sums[g] / (sizes[g] * sizes)
        between[g] = -np.inf
        nearest = int(np.argmax(between)) if k > 1 else None
        out.append(
            GroupSummary(
                group=g,
                members=tuple(int(i) for i in members),
                names=tuple(names[int(i)] for i in members),
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
    sim: np.ndarray, z: np.ndarray, labels: np.ndarray, k: int, cohesion: np.ndarray, ratio: float, limit: int
) -> tuple[SplitGroup, ...]:
    """Dense off-diagonal blocks.

    Sub-blocks (of a finer cut of the tree) in different groups that are about as similar to each other as the
    classes within their own groups are.
    """
    m = sim.shape[0]
    k_fine = min(max(4 * k, k + 2), m // 2)
    if k < 2 or k_fine <= k:
        return ()
    fine = _cut(z, k_fine)
    n_fine = int(fine.max()) + 1
    sums, sizes = _group_blocks(sim, fine, n_fine)
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


def _fuzzy_cmeans(
    x: np.ndarray, c: int, seed: int, restarts: int = 4, iters: int = 60, fuzz: float = 2.0
) -> np.ndarray:
    """Fuzzy c-means memberships (m x c) of the rows of x: the best of a few seeded restarts (lowest objective)."""
    rng = np.random.default_rng(seed)
    power = 2.0 / (fuzz - 1.0)
    sq_rows = (x * x).sum(1)[:, None]
    best, best_obj = None, np.inf
    for _ in range(restarts):
        u = rng.dirichlet(np.ones(c), size=x.shape[0])
        for _ in range(iters):
            w = u**fuzz
            centres = (w.T @ x) / w.sum(axis=0)[:, None]
            d2 = np.maximum(sq_rows + (centres * centres).sum(1)[None, :] - 2.0 * x @ centres.T, 1e-12)
            inv = d2 ** (-power / 2.0)
            new = inv / inv.sum(axis=1, keepdims=True)
            done = np.abs(new - u).max() < 1e-5
            u = new
            if done:
                break
        obj = float(((u**fuzz) * d2).sum())
        if obj < best_obj:
            best, best_obj = u, obj
    assert best is not None
    return best


def _failed_groups(
    sim: np.ndarray, labels: np.ndarray, k: int, cohesion: float, ratio: float, membership: float, seed: int, limit: int
) -> tuple[FailedGroup, ...]:
    """Mutually similar classes that the tree scatters over several groups.

    Fuzzy c-means (``c`` in 2, 3 and ``k + 1``) on the rows of the residual matrix: the similarity minus the mean
    similarity of the two classes' groups, i.e. what the flat groups do not already explain. A fuzzy cluster
    (membership above ``membership``) is a failed group when its members span two groups or more, no group holds
    more than 3/4 of them, and the mean similarity of members in *different* groups is at least ``ratio`` times
    the mean within-group similarity.
    """
    m = sim.shape[0]
    if k < 2 or m < 6 or not math.isfinite(cohesion) or cohesion <= 0:
        return ()
    sums, sizes = _group_blocks(sim, labels, k)
    block_mean = sums / np.outer(sizes, sizes)
    onehot = np.zeros((m, k))
    onehot[np.arange(m), labels] = 1.0
    dim = 48
    if m > dim:
        # rows of (S - E B E^T) P, never forming the residual: a random projection P keeps the distances between
        # rows (Johnson-Lindenstrauss) at a fraction of the cost
        proj = np.random.default_rng(seed).standard_normal((m, dim)) / math.sqrt(dim)
        residual = sim @ proj - onehot @ (block_mean @ (onehot.T @ proj))
    else:
        residual = sim - onehot @ block_mean @ onehot.T
    columns = [u[:, j] for c in sorted({2, 3, k + 1}) for u in [_fuzzy_cmeans(residual, c, seed)] for j in range(c)]
    member_sets = np.stack(columns, axis=1) >= membership  # (m, candidates)
    out: dict[tuple[int, ...], FailedGroup] = {}
    for j in range(member_sets.shape[1]):
        members = np.nonzero(member_sets[:, j])[0]
        n = len(members)
        if n < 3 or n > max(m // 2, 3) or n > 4000:
            continue
        spread = np.bincount(labels[members], minlength=k)
        if np.count_nonzero(spread) < 2 or spread.max() > 0.75 * n:
            continue
        lab = labels[members]
        across = lab[:, None] != lab[None, :]
        mean_across = float(sim[np.ix_(members, members)][across].mean())
        if mean_across >= ratio * cohesion:
            key = tuple(int(i) for i in members)
            groups = tuple(int(g) for g in np.nonzero(spread)[0])
            out[key] = FailedGroup(members=key, groups=groups, similarity=mean_across)
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
    max_groups: int = 30,
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
            ``2..max_groups``), used when neither ``n_groups`` nor ``distance_threshold`` is given.
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
        failed_ratio: a fuzzy cluster spread over several groups is a failed group when the mean similarity of
            its members that sit in different groups is at least this fraction of the mean within-group similarity.
        failed_membership: fuzzy membership above which a class belongs to a fuzzy cluster.
        find_failed: look for failed groups (fuzzy c-means on the rows of the residual matrix: the similarity
            minus the block means of the flat groups, i.e. the structure the tree did not capture).
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
            ``optimal_ordering`` above 3,000 classes.

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
    condensed = dist.condensed
    z = scipy_linkage(condensed, method=method)
    if optimal_ordering:
        if m > OPTIMAL_ORDERING_WARN:
            warnings.warn(
                f"optimal_ordering=True on {m} classes can take minutes (1 s at 1,000, 76 s at 2,622 classes).",
                UserWarning,
                stacklevel=2,
            )
        z = optimal_leaf_ordering(z, condensed)

    if order is not None:
        leaf_order = _check_order(order, m)
    elif previous is not None and not optimal_ordering:
        leaf_order = _leaf_order(z, _positions(previous.order))
    else:
        leaf_order = _leaf_order(z)

    metrics: dict[str, float] = {}
    if n_groups is not None:
        raw = _cut(z, n_groups)
    elif distance_threshold is not None:
        raw = fcluster(z, distance_threshold, criterion="distance").astype(np.intp) - 1
    else:
        ks = range(2, max(2, min(max_groups, m - 1)) + 1)
        scores = _silhouettes(dist, z, ks) if m >= 3 else {}
        if scores:
            best = max(scores, key=lambda k: (round(scores[k], 12), -k))
            metrics["silhouette"] = scores[best]
            raw = _cut(z, best)
        else:
            raw = np.zeros(m, dtype=np.intp)
    labels = _relabel_by_order(raw, leaf_order)
    k = int(labels.max()) + 1
    summary, mean_within, mean_between = _summaries(sim, labels, leaf_order, names)

    mean, std, skew = _offdiag_moments(sim)
    metrics.update(
        {
            "cophenetic_corr": _pearson(cophenet(z), condensed),
            "n_groups": float(k),
            "mean_within": mean_within,
            "mean_between": mean_between,
            "within_minus_between": mean_within - mean_between,
            "offdiag_mean": mean,
            "offdiag_std": std,
            "offdiag_skew": skew,
        }
    )
    del condensed, dist
    cohesions = np.array([g.cohesion for g in summary])
    split = _split_groups(sim, z, labels, k, cohesions, split_ratio, limit=10)
    failed: tuple[FailedGroup, ...] = ()
    if find_failed and k >= 2:
        failed = _failed_groups(sim, labels, k, mean_within, failed_ratio, failed_membership, seed, limit=10)
    sim32 = sim.astype(np.float32)
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
    )
    if previous is not None:
        metrics.update(compare_structures(result, previous))
    if taxonomy is not None:
        metrics.update(taxonomy_agreement(z, taxonomy, names))
    return result


def check_group_args(n_groups: Any, distance_threshold: Any, max_groups: Any, m: int) -> None:
    """Validate the options that choose the flat groups (shared by :func:`analyze` and the callback).

    Raises:
        ValueError: if both ``n_groups`` and ``distance_threshold`` are given, ``n_groups`` is not an int in
            ``1..m`` or ``max_groups`` is not an int larger than 1.
    """
    if n_groups is not None and distance_threshold is not None:
        raise ValueError(
            f"Expected only one of `n_groups` and `distance_threshold`, but got n_groups={n_groups} and "
            f"distance_threshold={distance_threshold}. Drop one of them."
        )
    if n_groups is not None and (isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= m):
        raise ValueError(f"Expected argument `n_groups` to be an int in 1..{m}, but got {n_groups!r}.")
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 2:
        raise ValueError(f"Expected argument `max_groups` to be an int larger than 1, but got {max_groups!r}.")


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
