"""The pairs of classes worth a look: near duplicates, outliers off the diagonal blocks, hubs (paper, section 5).

No labels are needed: each kind is read off the similarity matrix and its groups.

* **Near duplicates**: two classes that are each other's nearest class, and far nearer to each other than either is
  to any third class: ``(1 - s_ij)`` at most 1 / ``NEAR_RATIO`` (2.5) of the distance to the next nearest class of
  either, and ``s_ij >= 0.5``. Score: that ratio (duplicate identities, twins, one class annotated under two names).
* **Outliers off the diagonal blocks**: two classes in different groups whose residual (similarity minus the mean
  similarity of their two groups) stands out from the noise: at least the universal threshold ``sqrt(2 ln P)`` times
  the residuals' robust spread (1.4826 times their median absolute deviation), as the failed-group search measures it,
  and alike in earnest: a positive similarity, at least a quarter of the mean within-group similarity of their two
  groups. Score: the residual in spreads (a class mistaken for another group's). Pairs with a hub are left out: a
  hub is alike to all.
* **Hubs**: a class whose mean similarity to all the others stands out from the classes' mean similarities, by at
  least ``max(4, sqrt(2 ln m))`` robust spreads and by ``HUB_MIN_GAP`` (0.1) (a catch-all class, an over-predicted
  one: the paper's star and flame patterns). Score: that robust z.

At most ``LIMIT`` (10) of each kind are kept, the highest scores first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightning_classim.structure._backend import ops
from lightning_classim.structure._failed import cross_residuals
from lightning_classim.structure._result import Pair

__all__ = ["HUB_MIN_GAP", "LIMIT", "NEAR_RATIO", "find_pairs"]

NEAR_RATIO = 2.5
#: A hub's mean similarity to the others is at least this far above the median class's.
HUB_MIN_GAP = 0.1
LIMIT = 10


def robust_spread(values: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(values - np.median(values)))) if values.size else 0.0


def near_duplicates(sim: np.ndarray, names: Sequence[str]) -> list[Pair]:
    """Mutual nearest classes far nearer to each other than to any third class."""
    idx, val = ops().top_two(sim)
    out = []
    for i in range(sim.shape[0]):
        j = int(idx[i, 0])
        if j <= i or int(idx[j, 0]) != i or val[i, 0] < 0.5:
            continue
        gap = max(1.0 - float(val[i, 0]), 1e-9)
        nearest_other = 1.0 - max(float(val[i, 1]), float(val[j, 1]))
        ratio = nearest_other / gap
        if ratio >= NEAR_RATIO:
            out.append(Pair("near_duplicate", names[i], names[j], i, j, ratio, float(val[i, 0])))
    return sorted(out, key=lambda p: -p.score)[:LIMIT]


def outliers(
    sim: np.ndarray,
    labels: np.ndarray,
    block_mean: np.ndarray,
    names: Sequence[str],
    seed: int,
    skip: frozenset[int] = frozenset(),
) -> list[Pair]:
    """Pairs in different groups whose residual stands out from the residuals' noise (none with a class in ``skip``)."""
    m = sim.shape[0]
    if block_mean.shape[0] < 2 or m < 4:
        return []
    sample = cross_residuals(sim, labels, block_mean, np.random.default_rng(seed))
    spread = robust_spread(sample)
    if not spread > 0:
        return []
    cut = spread * math.sqrt(2.0 * math.log(m * (m - 1) / 2))
    cap = 64 * LIMIT
    rows, cols, vals, count, top = ops().residual_pairs(sim, labels, block_mean, cut, cap)
    for _ in range(60):  # more stand out than were kept: raise the cut halfway to the largest until all are kept
        if count <= cap or not top > cut:
            break
        cut = (cut + top) / 2
        rows, cols, vals, count, top = ops().residual_pairs(sim, labels, block_mean, cut, cap)
    within = np.diagonal(block_mean)
    pair_sim = sim[rows, cols]
    alike = (pair_sim > 0) & (pair_sim >= 0.25 * (within[labels[rows]] + within[labels[cols]]) / 2)
    if skip:
        alike &= ~np.isin(rows, list(skip)) & ~np.isin(cols, list(skip))
    rows, cols, vals = rows[alike], cols[alike], vals[alike]
    best = np.argsort(-vals, kind="stable")[:LIMIT]
    return [Pair("outlier", names[int(rows[t])], names[int(cols[t])], int(rows[t]), int(cols[t]),
                 float(vals[t] / spread), float(sim[rows[t], cols[t]])) for t in best]  # fmt: skip


def hubs(row_sums: np.ndarray, diag: np.ndarray, names: Sequence[str]) -> list[Pair]:
    """Classes whose mean similarity to the others stands out."""
    m = row_sums.shape[0]
    if m < 8:
        return []
    means = (row_sums - diag) / (m - 1)
    spread = robust_spread(means)
    if not spread > 0:
        return []
    z = (means - np.median(means)) / spread
    threshold = max(4.0, math.sqrt(2.0 * math.log(m)))
    found = np.nonzero((z >= threshold) & (means - np.median(means) >= HUB_MIN_GAP))[0]
    found = found[np.argsort(-z[found], kind="stable")][:LIMIT]
    return [Pair("hub", names[i], "", int(i), -1, float(z[i]), float(means[i])) for i in found.tolist()]


def find_pairs(
    sim: np.ndarray,
    names: Sequence[str],
    labels: np.ndarray,
    block_sums: tuple[np.ndarray, np.ndarray, np.ndarray],
    row_sums: np.ndarray,
    seed: int,
) -> tuple[Pair, ...]:
    """Near duplicates, then outliers, then hubs (each kind highest score first)."""
    sums, sizes, _ = block_sums
    block_mean = sums / np.outer(sizes, sizes)
    hub_pairs = hubs(row_sums, np.diagonal(sim), names)
    central = frozenset(p.i for p in hub_pairs)  # a hub is alike to everyone: its pairs are not outliers
    off_blocks = outliers(sim, labels, block_mean, names, seed, skip=central)
    return tuple(near_duplicates(sim, names) + off_blocks + hub_pairs)
