"""Sums of similarity over flat groups, the group summaries and the split groups.

One pass over the matrix sums it over the clusters of a fine cut that every coarser cut nests in (the cuts of a
monotone tree); the sums of each coarser cut then aggregate those in ``O(n_fine^2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightning_classim.structure._backend import ops
from lightning_classim.structure._result import GroupSummary, Level, SplitGroup
from lightning_classim.structure._tree import Cuts

__all__ = ["BlockSums", "merge_split", "split_at", "split_fine_k", "split_groups", "summaries", "tree_cross_sums"]


class BlockSums:
    """Sums of similarity between the groups of flat partitions of the classes.

    With ``fine``, a partition that the coarser ones nest in (the cuts of a monotone tree), the sums are computed
    once for ``fine`` and each nested partition aggregates them in ``O(k_fine^2)``; other partitions cost one pass.
    """

    def __init__(self, sim: np.ndarray, fine: np.ndarray | None = None) -> None:
        self.sim = sim
        self.num_classes = int(sim.shape[0])
        self.diag = np.diagonal(sim)
        self.fine = fine
        self.rows: np.ndarray | None = None
        if fine is not None:
            n_fine = int(fine.max()) + 1
            self.rows, self.fine_block = ops().cluster_rows(sim, fine, n_fine)
            self.fine_sizes = np.bincount(fine, minlength=n_fine).astype(np.float64)
            self.fine_diag = np.bincount(fine, weights=self.diag, minlength=n_fine)

    def rows_at(self, idx: np.ndarray) -> np.ndarray:
        """Sums of similarity of each fine cluster to the classes ``idx``, ``(n_fine, len(idx))``."""
        assert self.rows is not None
        return self.rows if idx.shape[0] == self.num_classes else self.rows[:, idx]

    def blocks(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block sums ``(k, k)`` (diagonal included), group sizes and the sums of the diagonal per group."""
        k = int(labels.max()) + 1
        if self.fine is not None:
            n_fine = self.fine_sizes.shape[0]
            parent = np.zeros(n_fine, dtype=np.intp)
            parent[self.fine] = labels
            if np.array_equal(parent[self.fine], labels):
                block = ops().aggregate_blocks(self.fine_block, parent, k)
                sizes = np.bincount(parent, weights=self.fine_sizes, minlength=k)
                return block, sizes, np.bincount(parent, weights=self.fine_diag, minlength=k)
        block = self._direct_blocks(labels, k)
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        return block, sizes, np.bincount(labels, weights=self.diag, minlength=k)

    def _direct_blocks(self, labels: np.ndarray, k: int) -> np.ndarray:
        """Block sums of a partition that does not nest in the fine one: one pass over the matrix."""
        return ops().cluster_rows(self.sim, labels, k)[1]


def tree_cross_sums(
    sums: BlockSums, order: np.ndarray, ranges: tuple[np.ndarray, np.ndarray, np.ndarray]
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


def summaries(
    block_sums: BlockSums, labels: np.ndarray, order: np.ndarray, names: Sequence[str]
) -> tuple[tuple[GroupSummary, ...], float, float]:
    """One :class:`GroupSummary` per group (in leaf order), and the mean within- and between-group similarity."""
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


def split_fine_k(k: int, m: int) -> int:
    """Number of sub-blocks that split groups are looked for in: a cut into about ``4 k`` groups."""
    return min(max(4 * k, k + 2), m // 2)


def split_groups(
    block_sums: BlockSums, cuts: Cuts, labels: np.ndarray, cohesion: np.ndarray, ratio: float, limit: int
) -> tuple[SplitGroup, ...]:
    """Dense off-diagonal blocks.

    Sub-blocks (of a finer cut of the tree) in different groups that are about as similar to each other as the
    classes within their own groups are: their mean similarity at least ``ratio`` of the groups' mean cohesion, and
    at least ``ratio`` of the way from the mean similarity of their two groups to it (sibling groups of one coarse
    level, alike as a whole, are nested blocks, not a split).
    """
    k = int(labels.max()) + 1
    k_fine = split_fine_k(k, labels.shape[0])
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
    indicator = np.zeros((k, n_fine))
    indicator[parent, np.arange(n_fine)] = 1.0
    group_sizes = indicator @ sizes
    groups_between = (indicator @ sums @ indicator.T) / np.maximum(np.outer(group_sizes, group_sizes), 1)
    base = groups_between[parent][:, parent]  # the mean similarity of the two sub-blocks' groups
    with np.errstate(invalid="ignore"):
        ok = (
            (parent[:, None] != parent[None, :])
            & (sizes[:, None] >= 2)
            & (sizes[None, :] >= 2)
            & (own > 0)
            & (between > 0)
            & (between >= ratio * own)
            & (between >= base + ratio * (own - base))
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


def merge_split(labels: np.ndarray, found: Sequence[SplitGroup], limit: int) -> tuple[SplitGroup, ...]:
    """Split groups found at several cuts of one tree, told in the groups of ``labels``.

    Each set's group is the group of ``labels`` that holds most of it; a pair of sets found twice is kept once (the
    first found), the closest to its groups' cohesion first, at most ``limit``.
    """
    out: dict[frozenset[tuple[int, ...]], SplitGroup] = {}
    for g in found:
        key = frozenset(g.members)
        if key in out:
            continue
        a, b = (int(np.bincount(labels[np.asarray(part)]).argmax()) for part in g.members)
        members = g.members if a <= b else (g.members[1], g.members[0])
        out[key] = SplitGroup(groups=(min(a, b), max(a, b)), members=members, similarity=g.similarity,
                              cohesion=g.cohesion)  # fmt: skip
    return tuple(sorted(out.values(), key=lambda g: -g.similarity / g.cohesion)[:limit])


def split_at(
    block_sums: BlockSums, cuts: Cuts, labels: np.ndarray, cohesion: np.ndarray, coarse: Level | None, ratio: float
) -> tuple[SplitGroup, ...]:
    """Split groups at the cut (``labels``, its groups' ``cohesion``) and at the ``coarse`` level (or none).

    Told in the cut's groups (:func:`merge_split`); at most 10.
    """
    split = split_groups(block_sums, cuts, labels, cohesion, ratio, limit=10)
    if coarse is None:
        return split
    coarse_cohesion = np.array([g.cohesion for g in coarse.summary])
    return merge_split(labels, [*split, *split_groups(block_sums, cuts, coarse.groups, coarse_cohesion, ratio, 10)], 10)
