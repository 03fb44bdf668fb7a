r"""The structure analysis of class embeddings, without the ``m x m`` matrix (100,000 classes and more).

:class:`~lightning_classim.HeadSimilarity` gives unit class vectors ``V`` (``m x r``) whose dot products are the
similarity matrix. :func:`~lightning_classim.analyze` given such embeddings builds the matrix and runs the dense
analysis up to :data:`DENSE_MAX` classes (exact: the same result as the matrix gives); above it, this route:

1. **Leaf clusters.** Spherical k-means with ``2 m / leaf_size`` centres (``leaf_size = max(8, 2 m / 8192)``),
   seeded by classes drawn at random, then rounds in which each class chooses among the 32 leaves nearest its own
   (:func:`leaf_clusters`); a leaf whose own tree joins classes no more alike than random pairs is parted there
   (:func:`split_mixed`, up to 16,384 leaves).
2. **The tree.** Average linkage inside each leaf, on its own small matrix (exact). Above the leaves, average linkage
   over the leaves on their exact mean similarities (the dot products of their sum vectors, weighted by their sizes:
   what average linkage over the classes gives when it keeps each leaf together). A merge above the leaves is drawn
   no lower than the merges below it, so the tree is monotone. The only approximation is step 1: a leaf is kept
   together even where the dense tree would part it.
3. **Everything read off the tree** as on the dense route, from exact sums: the leaf order, the levels, the groups
   (the mean silhouettes of 1,000 evenly spaced classes against all classes, from the groups' sum vectors), the
   group summaries, split groups, the cophenetic correlation (from the sum vectors of the two sides of every merge),
   the off-diagonal mean and spread (from the Gram matrix ``V^T V``), and the drift against the previous epoch (the
   correlation of two matrices is ``||U^T V||_F^2`` and sums of that kind).

What is not the same as on the dense route, in words:

* the off-diagonal **skew** is estimated from 200,000 pairs drawn at random (seeded; standard error about 0.005);
* the **pairs worth a look** are found among each class's ``NEIGHBOURS`` (16) nearest classes: exactly up to
  :data:`EXACT_NEIGHBOURS_MAX` classes, and above it among about 2,048 classes: those of the leaves nearest to the
  class's own (an outlier pair that is not among either class's 16 nearest is not found);
* **failed groups** are not searched (the search reads every pair's residual): a note says so, unless
  ``find_failed=False``;
* the tree is always average linkage (another ``method`` gets a note saying so), on ``distance="correlation"``, without
  ``clip_negative`` or ``optimal_ordering`` (an error says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster
from scipy.cluster.hierarchy import linkage as scipy_linkage

from lightning_classim._stats import condensed
from lightning_classim.options import StructureOptions
from lightning_classim.structure._groups import BlockSums, split_at, summaries
from lightning_classim.structure._levels import choose_cut, plan_cuts, searched_coarse
from lightning_classim.structure._pairs import LIMIT, NEAR_RATIO, hubs, robust_spread
from lightning_classim.structure._result import Level, Pair
from lightning_classim.structure._silhouette import nested
from lightning_classim.structure._tree import Cuts, leaf_order, positions

if TYPE_CHECKING:
    import torch

__all__ = [
    "DENSE_MAX",
    "EXACT_NEIGHBOURS_MAX",
    "EmbeddedSums",
    "embedded_analysis",
    "embedded_parts",
    "embedded_tree",
    "gram_offdiag_corr",
    "leaf_clusters",
    "nearest_classes",
    "neighbours",
    "split_mixed",
    "unit_vectors",
]

#: Up to this many classes, ``analyze(embeddings)`` builds the matrix (64 MB in float32) and runs the dense route.
DENSE_MAX = 4096
#: Up to this many classes, the neighbours of every class are exact (all pairs, in blocks).
EXACT_NEIGHBOURS_MAX = 20_000
#: Parts per k-means split.
BRANCH = 128
#: Rounds of k-means over all leaves after the splits, and the leaves each class chooses among.
REFINE_ROUNDS = 20
REFINE_PROBES = 32
#: At most about this many leaves (the tree above them is built on a ``leaves x leaves`` matrix).
MAX_LEAVES = 8192
#: A leaf is parted where its own tree joins classes whose mean similarity is below the off-diagonal mean plus this
#: many standard deviations: sets of classes no more alike than two classes drawn at random are not kept together.
MIXED_SD = 2.0
#: Neighbours per class searched for the pairs worth a look.
NEIGHBOURS = 16
#: Above ``EXACT_NEIGHBOURS_MAX``, a class's neighbours are searched among about this many classes: those of the
#: leaves nearest to its own (4 to 32 leaves).
PROBE_CLASSES = 2048
#: Pairs drawn for the skew of the off-diagonal values (its standard error is about ``sqrt(6 / 200,000)``: 0.005).
SKEW_PAIRS = 200_000


def unit_vectors(embeddings: Any) -> np.ndarray:
    """The ``(m, r)`` float32 vectors of :class:`~lightning_classim.ClassEmbeddings` (or an array of unit rows)."""
    import torch

    vectors = getattr(embeddings, "vectors", embeddings)
    arr = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] < 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"Expected class embeddings: an (m, r) float array of unit rows with m >= 2, such as "
            f"`HeadSimilarity.compute(weight).vectors`, but got dtype {arr.dtype} and shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise ValueError("Expected finite class embeddings, but they hold NaN or infinite values.")
    norms = np.linalg.norm(arr.astype(np.float64), axis=1)
    bad = np.nonzero((np.abs(norms - 1.0) > 1e-3) & (norms > 1e-6))[0]
    if bad.size:
        raise ValueError(
            f"Expected class embeddings with unit rows (or zero rows for constant classes), but row {int(bad[0])} "
            f"has norm {norms[bad[0]]:.4g}. Pass `HeadSimilarity.compute(weight)`, or normalise the rows."
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_embedded_options(opts: StructureOptions) -> None:
    """The options the embedding route supports (see the module)."""
    wrong = {
        "distance": (opts.distance, "correlation"),
        "clip_negative": (opts.clip_negative, False),
        "optimal_ordering": (opts.optimal_ordering, False),
    }
    for name, (value, allowed) in wrong.items():
        if value != allowed:
            raise ValueError(
                f"Expected `{name}={allowed!r}` for class embeddings above {DENSE_MAX} classes (the route without the "
                f"m x m matrix builds average-linkage trees on 1 - r), but got {name}={value!r}. Leave `{name}` at "
                f"its default, or pass the dense matrix (`embeddings.matrix()`) if it fits."
            )


# ----------------------------------------------------------------------------------------------- leaves


def _kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 12) -> torch.Tensor:
    """Spherical k-means labels of the rows of ``x`` (k-means++-like seeds; empty clusters re-seeded)."""
    import torch

    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    best = x @ x[first]
    for _ in range(1, k):  # k-means++: the next seed drawn with odds (1 - its best similarity to a seed)^2
        weights = (1.0 - best).clamp(min=0.0) ** 2
        nxt = (
            int(torch.multinomial(weights, 1, generator=generator))
            if float(weights.sum()) > 0
            else int(torch.argmin(best))
        )
        centres.append(x[nxt])
        best = torch.maximum(best, x @ x[nxt])
    c = torch.stack(centres)
    labels = torch.zeros(n, dtype=torch.long)
    for it in range(iters):
        sims = x @ c.T
        new = sims.argmax(dim=1)
        if it > 0 and torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            worst = torch.argsort(sims.max(dim=1).values)[: empty.numel()]
            sums[empty] = x[worst]
        norms = sums.norm(dim=1, keepdim=True)
        c = torch.where(norms > 0, sums / norms.clamp(min=1e-30), c)
    return labels


def leaf_clusters(vectors: np.ndarray, leaf_size: int, seed: int) -> list[np.ndarray]:
    """The leaves: spherical k-means with ``2 m / leaf_size`` centres.

    Seeded by classes drawn at random (every centre's class nearest to it), then :func:`refine_leaves`; a leaf
    grown above ``4 leaf_size`` is split again by :func:`split_leaves`. One full assignment (``O(m^2 r / leaf_size)``)
    and rounds over the nearest leaves only.
    """
    import torch

    m = vectors.shape[0]
    if m <= leaf_size:
        return [np.arange(m)]
    c = min(m, 2 * -(-m // leaf_size))
    x = torch.from_numpy(vectors)
    generator = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(m, generator=generator)[:c]]
    labels = torch.cat([(x[lo : lo + 16384] @ centres.T).argmax(1) for lo in range(0, m, 16384)]).numpy()
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(c + 1))
    leaves = refine_leaves(vectors, [order[bounds[g] : bounds[g + 1]] for g in range(c) if bounds[g + 1] > bounds[g]])
    out = []
    for idx in leaves:
        out.extend(
            [idx] if idx.shape[0] <= 4 * leaf_size else [idx[p] for p in split_leaves(vectors[idx], leaf_size, seed)]
        )
    return out


def refine_leaves(vectors: np.ndarray, leaves: list[np.ndarray]) -> list[np.ndarray]:
    """Spherical k-means over all leaves at once, each class choosing among the 32 leaves nearest its own.

    A split into a few parts cuts through groups of classes when there are many more of them; these rounds move
    the classes of such a cut group back together (``REFINE_ROUNDS`` rounds, or until under 0.5% move).
    """
    import torch

    m, c = vectors.shape[0], len(leaves)
    if c < 2:
        return leaves
    x = torch.from_numpy(vectors)
    labels = np.empty(m, dtype=np.int64)
    for t, idx in enumerate(leaves):
        labels[idx] = t
    for _ in range(REFINE_ROUNDS):
        sums = torch.zeros(c, x.shape[1]).index_add_(0, torch.from_numpy(labels), x)
        centres = sums / sums.norm(dim=1, keepdim=True).clamp(min=1e-30)
        near = torch.topk(centres @ centres.T, min(REFINE_PROBES, c), dim=1).indices
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(c + 1))
        new = labels.copy()
        for g in np.nonzero(np.diff(bounds))[0].tolist():
            idx = order[bounds[g] : bounds[g + 1]]
            new[idx] = near[g][(x[torch.from_numpy(idx)] @ centres[near[g]].T).argmax(1)].numpy()
        moved = float(np.mean(new != labels))
        labels = new
        if moved < 0.005:
            break
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(c + 1))
    return [order[bounds[g] : bounds[g + 1]] for g in range(c) if bounds[g + 1] > bounds[g]]


def split_leaves(vectors: np.ndarray, leaf_size: int, seed: int) -> list[np.ndarray]:
    """Split the classes by spherical k-means, ``BRANCH`` parts at a time, into parts of at most ``leaf_size``."""
    import torch

    x = torch.from_numpy(vectors)
    generator = torch.Generator().manual_seed(seed)
    leaves: list[np.ndarray] = []
    stack = [np.arange(vectors.shape[0])]
    while stack:
        idx = stack.pop()
        if idx.shape[0] <= leaf_size:
            leaves.append(idx)
            continue
        k = min(BRANCH, max(2, math.ceil(math.sqrt(idx.shape[0] / leaf_size))), -(-idx.shape[0] // leaf_size))
        labels = _kmeans(x[torch.from_numpy(idx)], k, generator).numpy()
        parts = [idx[labels == g] for g in range(k) if (labels == g).any()]
        if len(parts) < 2:  # identical vectors: any split is as good
            parts = np.array_split(idx, k)
        stack.extend(parts)
    return leaves


# ----------------------------------------------------------------------------------------------- the tree


def _upgma(sims: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Average linkage of clusters with the given sizes and mean similarities: merges ``(slot a, slot b, height)``.

    ``sims`` is overwritten (it becomes the chain's working distances).

    A nearest-neighbour chain on ``1 - mean similarity``, with the Lance-Williams update of average linkage (the
    sizes weight it); the merges as found (not sorted), each naming the two slots it joined (the second keeps it).
    """
    c = sizes.shape[0]
    dist = np.subtract(1.0, sims, out=sims)  # in place: the caller's matrix becomes the working distances
    np.fill_diagonal(dist, np.inf)
    size = sizes.astype(np.float64).copy()
    active = np.ones(c, dtype=bool)
    out = np.empty((c - 1, 3))
    chain: list[int] = []
    for step in range(c - 1):
        if not chain:
            chain.append(int(np.argmax(active)))
        while True:
            x = chain[-1]
            y = int(np.argmin(dist[x]))
            current = float(dist[x, y])
            if len(chain) > 1 and dist[x, chain[-2]] <= current:
                y, current = chain[-2], float(dist[x, chain[-2]])
            if len(chain) > 1 and y == chain[-2]:
                break
            chain.append(y)
        chain = chain[:-2]
        nx, ny = size[x], size[y]
        new = (nx * dist[x] + ny * dist[y]) / (nx + ny)
        dist[y], dist[:, y] = new, new
        dist[x], dist[:, x] = np.inf, np.inf
        dist[y, y] = np.inf
        size[y] = nx + ny
        active[x] = False
        out[step] = (x, y, current)
    return out


def leaf_size_for(m: int) -> int:
    """The largest leaf: ``max(8, 2 m / MAX_LEAVES)``."""
    return max(8, -(-2 * m // MAX_LEAVES))


def _local_distances(x64: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    """The condensed ``1 - s`` of the classes ``idx``."""
    import torch

    part = x64[torch.from_numpy(idx)]
    return np.maximum(1.0 - condensed((part @ part.T).clamp_(-1.0, 1.0).numpy()), 0.0)


def split_mixed(
    x64: torch.Tensor, leaves: list[np.ndarray], split_height: float, limit: int | None = None
) -> list[np.ndarray]:
    """Part each leaf where its own average-linkage tree joins classes no more alike than ``1 - split_height``.

    The leaves whose top merges are highest are parted first, while there are fewer than ``limit`` leaves (default
    ``2 MAX_LEAVES``): the tree above the leaves is built on a ``leaves x leaves`` matrix.
    """
    limit = 2 * MAX_LEAVES if limit is None else limit
    trees = [
        scipy_linkage(_local_distances(x64, idx), method="average") if idx.shape[0] >= 2 else None for idx in leaves
    ]
    tops = np.array([-np.inf if z is None else z[-1, 2] for z in trees])
    out: list[np.ndarray] = []
    count = len(leaves)
    parted = set()
    for t in np.argsort(-tops, kind="stable").tolist():
        z = trees[t]
        if z is None or tops[t] <= split_height or count >= limit:
            break
        labels = fcluster(z, split_height, criterion="distance")
        n = int(labels.max())
        if count + n - 1 > limit:
            continue
        count += n - 1
        parted.add(t)
        out.extend(leaves[t][labels == g] for g in range(1, n + 1))
    out.extend(idx for t, idx in enumerate(leaves) if t not in parted)
    return out


def embedded_tree(
    vectors: np.ndarray, seed: int = 0, split_height: float = math.inf
) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """The average-linkage tree (a scipy linkage matrix), the sum of ``coph_ij * s_ij`` over pairs, and the leaves.

    See the module: leaves by spherical k-means (parted where their own tree joins classes farther apart than
    ``split_height``), exact average linkage inside them and above them.
    """
    import torch

    m = vectors.shape[0]
    x64 = torch.from_numpy(vectors).to(torch.float64)
    leaves = leaf_clusters(vectors, leaf_size_for(m), seed)
    if math.isfinite(split_height):
        leaves = split_mixed(x64, leaves, split_height)
    rows: list[np.ndarray] = []  # (a, b, height, size), in creation order, node ids m + creation index
    roots = np.empty(len(leaves), dtype=np.int64)
    coph_dot_s = 0.0
    made = 0
    for t, idx in enumerate(leaves):
        if idx.shape[0] == 1:
            roots[t] = idx[0]
            continue
        d = _local_distances(x64, idx)
        z = scipy_linkage(d, method="average")
        coph_dot_s += float(np.dot(cophenet(z), 1.0 - d))
        n = idx.shape[0]
        ids = np.concatenate([idx, m + made + np.arange(n - 1)])
        z[:, 0], z[:, 1] = ids[z[:, 0].astype(np.intp)], ids[z[:, 1].astype(np.intp)]
        rows.append(z)
        made += n - 1
        roots[t] = m + made - 1
    local_rows = np.concatenate(rows) if rows else np.empty((0, 4))
    c = len(leaves)
    leaf_of = np.empty(m, dtype=np.intp)
    for t, idx in enumerate(leaves):
        leaf_of[idx] = t
    sums = torch.zeros(c, x64.shape[1], dtype=torch.float64).index_add_(0, torch.from_numpy(leaf_of), x64)
    sizes = np.array([idx.shape[0] for idx in leaves], dtype=np.float64)
    top = np.empty((max(c - 1, 0), 4))
    if c > 1:
        means = (sums @ sums.T).numpy()  # the block sums, made the mean similarities in place (one c x c array)
        means /= sizes[:, None]
        means /= sizes[None, :]
        merges = _upgma(means, sizes)  # reads only the off-diagonal means
        del means
        merges = merges[np.argsort(merges[:, 2], kind="mergesort")]
        node = roots.copy()  # the node that each slot's cluster is now
        height_of: dict[int, float] = {}
        for row in range(local_rows.shape[0]):
            height_of[m + row] = float(local_rows[row, 2])
        slot_sums = sums.numpy().copy()
        slot_size = sizes.copy()
        # the union of slots: merges name slots; a slot merged away points to the slot that kept it
        parent = np.arange(c)

        def find(s: int) -> int:
            while parent[s] != s:
                parent[s] = parent[parent[s]]
                s = int(parent[s])
            return s

        for r, (a, b, h) in enumerate(merges.tolist()):
            sa, sb = find(int(a)), find(int(b))
            na, nb = int(node[sa]), int(node[sb])
            height = max(h, height_of.get(na, 0.0), height_of.get(nb, 0.0))  # monotone
            new_id = m + made + r
            height_of[new_id] = height
            top[r] = (min(na, nb), max(na, nb), height, slot_size[sa] + slot_size[sb])
            coph_dot_s += height * float(slot_sums[sa] @ slot_sums[sb])
            parent[sa] = sb
            node[sb] = new_id
            slot_sums[sb] += slot_sums[sa]
            slot_size[sb] += slot_size[sa]
    z = np.concatenate([local_rows, top])
    # renumber the merges by height (scipy's order: a merge's row comes after its children's)
    rank = np.argsort(z[:, 2], kind="mergesort")
    new_id = np.empty(m - 1, dtype=np.int64)
    new_id[rank] = m + np.arange(m - 1)
    z = z[rank]
    for col in (0, 1):
        inner = z[:, col] >= m
        z[inner, col] = new_id[(z[inner, col] - m).astype(np.intp)]
    z[:, :2] = np.sort(z[:, :2], axis=1)
    return z, coph_dot_s, leaves


# ----------------------------------------------------------------------------------------------- sums


class EmbeddedSums(BlockSums):
    """:class:`BlockSums` from unit vectors: a block's sum is the dot product of its two groups' sum vectors.

    The diagonal of the matrix is 1 for every class (also for a constant class, whose vector is zero).
    """

    def __init__(self, vectors: np.ndarray, fine: np.ndarray | None = None) -> None:
        import torch

        self.x64 = torch.from_numpy(vectors).to(torch.float64)
        self.num_classes = int(vectors.shape[0])
        self.self_dot = (self.x64 * self.x64).sum(1).numpy()
        self.diag = np.ones(self.num_classes)
        self.fine = fine
        self.rows = None
        if fine is not None:
            n_fine = int(fine.max()) + 1
            self.fine_sums = self._group_sums(fine, n_fine)
            self.fine_sizes = np.bincount(fine, minlength=n_fine).astype(np.float64)
            self.fine_diag = self.fine_sizes.copy()
            self.fine_block = self._direct_blocks(fine, n_fine)

    def _group_sums(self, labels: np.ndarray, k: int) -> torch.Tensor:
        import torch

        return torch.zeros(k, self.x64.shape[1], dtype=torch.float64).index_add_(0, torch.from_numpy(labels), self.x64)

    def _direct_blocks(self, labels: np.ndarray, k: int) -> np.ndarray:

        sums = self._group_sums(labels, k)
        block = (sums @ sums.T).numpy()
        block[np.diag_indices(k)] += np.bincount(labels, weights=1.0 - self.self_dot, minlength=k)
        return block

    def rows_at(self, idx: np.ndarray) -> np.ndarray:
        import torch

        assert self.fine is not None
        out = (self.fine_sums @ self.x64[torch.from_numpy(idx)].T).numpy()
        out[self.fine[idx], np.arange(idx.shape[0])] += 1.0 - self.self_dot[idx]
        return out

    def row_sums(self) -> np.ndarray:
        """Each class's sum of similarity over all classes (itself included)."""
        return (self.x64 @ self.x64.sum(0)).numpy() + (1.0 - self.self_dot)


def offdiag_moments(vectors: np.ndarray, seed: int) -> tuple[float, float, float, float, int]:
    """Mean, centred sum of squares, standard deviation and (sampled) skew of the off-diagonal values; the pairs."""
    import torch

    m = vectors.shape[0]
    x64 = torch.from_numpy(vectors).to(torch.float64)
    self_dot = (x64 * x64).sum(1)
    n_pairs = m * (m - 1) // 2
    total = float((x64.sum(0) @ x64.sum(0) - self_dot.sum()) / 2)
    gram = x64.T @ x64
    squares = float(((gram * gram).sum() - (self_dot * self_dot).sum()) / 2)
    mean = total / n_pairs
    s2 = max(squares - n_pairs * mean * mean, 0.0)
    std = math.sqrt(s2 / n_pairs)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, m, SKEW_PAIRS)
    j = rng.integers(0, m - 1, SKEW_PAIRS)
    j = j + (j >= i)
    vals = np.concatenate([np.einsum("ij,ij->i", vectors[i[lo : lo + 50_000]], vectors[j[lo : lo + 50_000]])
                           for lo in range(0, SKEW_PAIRS, 50_000)]).astype(np.float64)  # fmt: skip
    skew = float(np.mean((vals - mean) ** 3)) / std**3 if std > 0 else float("nan")
    return mean, s2, std, skew, n_pairs


def embedded_cophenetic_corr(z: np.ndarray, coph_dot_s: float, mean_s: float, s2: float, n_pairs: int) -> float:
    """Pearson correlation of the cophenetic distances with ``1 - s`` (see ``Distances.cophenetic_corr``)."""
    m = z.shape[0] + 1
    node_size = np.concatenate([np.ones(m), z[:, 3]])
    kids = z[:, :2].astype(np.intp)
    cross = node_size[kids[:, 0]] * node_size[kids[:, 1]]
    h = z[:, 2]
    sum_c = float(cross @ h)
    mean_c = sum_c / n_pairs
    var_c = float(cross @ (h * h)) / n_pairs - mean_c * mean_c
    coph_dot_d = sum_c - coph_dot_s
    mean_d, var_d = 1.0 - mean_s, s2 / n_pairs
    cov = coph_dot_d / n_pairs - mean_c * mean_d
    den = math.sqrt(max(var_c, 0.0) * max(var_d, 0.0))
    return cov / den if den > 0 else float("nan")


# ----------------------------------------------------------------------------------------------- neighbours


def neighbours(vectors: np.ndarray, k: int, leaves: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each class's ``k`` most similar other classes ``(indices, values)``: exact, or among the probed leaves."""
    import torch

    m = vectors.shape[0]
    k = min(k, m - 1)
    x = torch.from_numpy(vectors)
    idx_out = np.empty((m, k), dtype=np.int64)
    val_out = np.empty((m, k), dtype=np.float32)
    if leaves is None or m <= EXACT_NEIGHBOURS_MAX:
        for lo in range(0, m, 2048):
            hi = min(m, lo + 2048)
            sims = x[lo:hi] @ x.T
            sims[torch.arange(hi - lo), torch.arange(lo, hi)] = -float("inf")
            top = torch.topk(sims, k, dim=1)
            idx_out[lo:hi], val_out[lo:hi] = top.indices.numpy(), top.values.clamp(-1.0, 1.0).numpy()
        return idx_out, val_out
    centres = torch.stack([x[torch.from_numpy(idx)].sum(0) for idx in leaves])
    centres = centres / centres.norm(dim=1, keepdim=True).clamp(min=1e-30)
    probes = min(len(leaves), max(4, min(32, -(-PROBE_CLASSES // max(len(idx) for idx in leaves)))))
    near = torch.topk(centres @ centres.T, probes, dim=1).indices.numpy()
    for t, idx in enumerate(leaves):
        cand = np.concatenate([leaves[u] for u in near[t]])
        sims = x[torch.from_numpy(idx)] @ x[torch.from_numpy(cand)].T
        sims[cand[None, :] == idx[:, None]] = -float("inf")
        kk = min(k, cand.shape[0] - 1)
        top = torch.topk(sims, kk, dim=1)
        idx_out[idx, :kk] = cand[top.indices.numpy()]
        val_out[idx, :kk] = top.values.clamp(-1.0, 1.0).numpy()
        if kk < k:
            idx_out[idx, kk:] = idx_out[idx, :1]
            val_out[idx, kk:] = -np.inf
    return idx_out, val_out


def nearest_classes(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's ``k`` nearest classes from unit class vectors: exact up to ``EXACT_NEIGHBOURS_MAX``, else probed."""
    vec = np.ascontiguousarray(vectors, dtype=np.float32)
    leaves = None
    if vec.shape[0] > EXACT_NEIGHBOURS_MAX:
        leaves = leaf_clusters(vec, leaf_size_for(vec.shape[0]), 0)
    return neighbours(vec, k, leaves)


def embedded_pairs(
    vectors: np.ndarray,
    names: Sequence[str],
    labels: np.ndarray,
    block_mean: np.ndarray,
    row_sums: np.ndarray,
    nn: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> tuple[Pair, ...]:
    """Near duplicates, outliers and hubs, by the dense route's rules, among each class's nearest classes."""
    m = vectors.shape[0]
    idx, val = nn
    near: list[Pair] = []
    for i in range(m):
        j = int(idx[i, 0])
        if j <= i or int(idx[j, 0]) != i or val[i, 0] < 0.5:
            continue
        gap = max(1.0 - float(val[i, 0]), 1e-9)
        nearest_other = 1.0 - max(float(val[i, 1]), float(val[j, 1])) if idx.shape[1] > 1 else 1.0
        ratio = nearest_other / gap
        if ratio >= NEAR_RATIO:
            near.append(Pair("near_duplicate", names[i], names[j], i, j, ratio, float(val[i, 0])))
    near = sorted(near, key=lambda p: -p.score)[:LIMIT]
    hub_pairs = hubs(row_sums, np.ones(m), names)
    central = {p.i for p in hub_pairs}
    off: list[Pair] = []
    if block_mean.shape[0] >= 2 and m >= 4:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, m, 20_000)
        b = rng.integers(0, m, 20_000)
        cross = labels[a] != labels[b]
        a, b = a[cross][:4096], b[cross][:4096]
        sample = np.einsum("ij,ij->i", vectors[a], vectors[b]) - block_mean[labels[a], labels[b]]
        spread = robust_spread(sample)
        if spread > 0:
            cut = spread * math.sqrt(2.0 * math.log(m * (m - 1) / 2))
            rows = np.repeat(np.arange(m), idx.shape[1])
            cols = idx.ravel()
            sims = val.ravel().astype(np.float64)
            keep = (labels[rows] != labels[cols]) & (rows < cols) & np.isfinite(sims)
            rows, cols, sims = rows[keep], cols[keep], sims[keep]
            resid = sims - block_mean[labels[rows], labels[cols]]
            within = np.diagonal(block_mean)
            ok = (resid >= cut) & (sims > 0) & (sims >= 0.25 * (within[labels[rows]] + within[labels[cols]]) / 2)
            if central:
                ok &= ~np.isin(rows, list(central)) & ~np.isin(cols, list(central))
            rows, cols, sims, resid = rows[ok], cols[ok], sims[ok], resid[ok]
            pairs_seen: set[tuple[int, int]] = set()
            for t in np.argsort(-resid, kind="stable").tolist():
                key = (int(rows[t]), int(cols[t]))
                if key in pairs_seen:
                    continue
                pairs_seen.add(key)
                off.append(Pair("outlier", names[key[0]], names[key[1]], key[0], key[1], float(resid[t] / spread),
                                float(sims[t])))  # fmt: skip
                if len(off) >= LIMIT:
                    break
    return tuple(near + off + hub_pairs)


# ----------------------------------------------------------------------------------------------- the parts


def embedded_parts(vectors: np.ndarray, opts: StructureOptions, previous_order: np.ndarray | None) -> dict[str, Any]:
    """Tree, order, groups, levels, sums and metrics of the embedding route (see :func:`analyze`)."""
    m = vectors.shape[0]
    mean_s, s2, std, skew, n_pairs = offdiag_moments(vectors, opts.seed)
    z, coph_dot_s, leaves = embedded_tree(vectors, opts.seed, split_height=1.0 - (mean_s + MIXED_SD * std))
    order = leaf_order(z, positions(previous_order)) if previous_order is not None else leaf_order(z)
    cuts = Cuts(z, order)
    plan = plan_cuts(z, cuts, opts, m)
    sums = EmbeddedSums(vectors, cuts.into(plan.fine_k))
    metrics: dict[str, float] = {"cophenetic_corr": embedded_cophenetic_corr(z, coph_dot_s, mean_s, s2, n_pairs)}
    wanted = plan.wanted(opts, m)
    assert cuts.gaps is not None
    every = nested(sums, cuts.gaps, z, cuts.order, wanted) if wanted else {}
    raw = plan.asked
    chosen, silhouette, scores = choose_cut(plan, every, opts, m)
    if chosen is not None:
        metrics["silhouette"] = silhouette
        raw = cuts.into(chosen)
    levels = [(k, height, score, distinct, every.get(k, float("nan"))) for k, height, score, distinct in plan.levels]
    return {"z": z, "order": order, "cuts": cuts, "raw": raw, "sums": sums, "metrics": metrics, "scores": scores,
            "levels": levels, "moments": (mean_s, std, skew), "leaves": leaves}  # fmt: skip


def embedded_analysis(
    vectors: np.ndarray,
    opts: StructureOptions,
    names: Sequence[str],
    previous_order: np.ndarray | None,
) -> dict[str, Any]:
    """Everything :func:`analyze` puts in its result, from the embeddings (see the module)."""
    check_embedded_options(opts)
    parts = embedded_parts(vectors, opts, previous_order)
    z, order, cuts, sums, metrics = parts["z"], parts["order"], parts["cuts"], parts["sums"], parts["metrics"]
    labels = parts["raw"]  # a monotone tree: numbered along the order
    k = int(labels.max()) + 1
    summary, mean_within, mean_between = summaries(sums, labels, order, names)
    mean, std, skew = parts["moments"]
    metrics.update(n_groups=float(k), mean_within=mean_within, mean_between=mean_between,
                   within_minus_between=mean_within - mean_between, offdiag_mean=mean, offdiag_std=std,
                   offdiag_skew=skew)  # fmt: skip
    cohesions = np.array([g.cohesion for g in summary])
    levels = []
    for i, (n, height, score, distinct, silhouette) in enumerate(parts["levels"], start=1):
        cut = cuts.into(n)
        levels.append(Level(n, cut, summaries(sums, cut, order, names)[0], silhouette, height, score, distinct))
        metrics[f"level{i}/n_groups"] = float(n)
        metrics[f"level{i}/silhouette"] = silhouette
    metrics["n_levels"] = float(len(levels))
    split = split_at(sums, cuts, labels, cohesions, searched_coarse(levels, k), opts.split_ratio)
    block, sizes, _ = sums.blocks(labels)
    block_mean = block / np.outer(sizes, sizes)
    nn = neighbours(vectors, NEIGHBOURS, parts["leaves"])
    pairs = embedded_pairs(vectors, names, labels, block_mean, sums.row_sums(), nn, opts.seed)
    for kind in ("near_duplicate", "outlier", "hub"):
        metrics[f"pairs/{kind}"] = float(sum(p.kind == kind for p in pairs))
    notes = []
    if opts.method != "average":
        notes.append(
            f"method={opts.method!r} needs the m x m matrix: the tree of these {vectors.shape[0]} classes from "
            "embeddings is average linkage. Pass `method='average'` to drop this note."
        )
    if opts.find_failed:
        notes.append(
            f"Failed groups are not searched on {vectors.shape[0]} classes from embeddings (the search reads every "
            "pair). Pass `find_failed=False` to drop this note."
        )
    if (opts.n_groups is not None and k < opts.n_groups) or (opts.automatic and k == 1):
        notes.append(f"The cut gave {k} group(s): merges tie, or the classes hold no groups.")
    return {"z": z, "order": order, "labels": labels, "summary": summary, "metrics": metrics, "split": split,
            "levels": tuple(levels), "pairs": pairs, "scores": parts["scores"], "notes": notes,
            "nearest": nn}  # fmt: skip


def gram_offdiag_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the off-diagonal values of ``a a^T`` and ``b b^T`` (unit or zero rows), exactly."""
    import torch

    ua, ub = torch.from_numpy(a).to(torch.float64), torch.from_numpy(b).to(torch.float64)
    m = a.shape[0]
    n = m * (m - 1)
    da, db = (ua * ua).sum(1), (ub * ub).sum(1)
    sa = float(ua.sum(0) @ ua.sum(0) - da.sum())
    sb = float(ub.sum(0) @ ub.sum(0) - db.sum())
    ga, gb, cross = ua.T @ ua, ub.T @ ub, ua.T @ ub
    saa = float((ga * ga).sum() - (da * da).sum())
    sbb = float((gb * gb).sum() - (db * db).sum())
    sab = float((cross * cross).sum() - (da * db).sum())
    cov = sab / n - (sa / n) * (sb / n)
    var = (saa / n - (sa / n) ** 2) * (sbb / n - (sb / n) ** 2)
    return cov / math.sqrt(var) if var > 0 else float("nan")
