"""Levels: the nested cuts of the tree worth reading, coarse to fine.

A monotone tree cut into ``k`` groups keeps those ``k`` groups over a range of heights: from the ``k``-th highest
merge up to the ``(k - 1)``-th. Nested blocks show as cuts whose range is wide: the merges inside the blocks sit far
below those between them. The **score** of a cut is its range over the median range of the cuts into ``k/2`` to
``2k`` groups: how far it stands out from its neighbours, whatever the scale. Cuts into ``2 .. min(m / 2,
4 max_groups)`` groups are tried. The rule reads the tree only (it costs nothing next to the linkage) and does not
depend on the silhouette, whose curve is often flat on real data.

1. **Distinct levels.** A cut whose score is at least ``DISTINCT_SCORE`` (12) and whose range is at least
   ``DISTINCT_SHARE`` (4%) of the heights spanned by all the cuts tried. Of several within a factor of 1.5 in
   ``k``, the widest is kept; at most ``MAX_LEVELS`` (4). Planted superclasses of subclasses give exactly their two
   levels; matrices of noise give one in about 30 (``benchmarks/study_levels.py``).
2. **Reading levels.** Real classifiers seldom have such gaps: their trees decay smoothly and the silhouette falls
   with ``k`` (it picks 2 groups on Delicious, Bibtex and Enron). When fewer than two levels are distinct, the
   highest peaks of the score among the cuts into at most ``max_groups`` groups complete them (a peak: a cut whose
   score is above that of every such cut within a factor of 1.5 in ``k``, and at least ``READING_SCORE``, 2): the
   cuts that stand out most among their neighbours, the blocks a reader sees at two scales. Their ``distinct`` is
   ``False``.
3. **The middle reading.** A smooth tree (no distinct level) has its families in its middle, not at its ends: the
   reading levels tend to be its coarsest cut (2 or 3 groups) and a fine one (the kinds inside the families). The
   score's highest peak strictly between the coarsest and the finest level (not within a factor of 1.5 of either;
   with one level, between it and ``max_groups``) is added as a reading level.
4. **Few classes.** Up to ``SMALL_M`` (30) classes, a smooth tree's levels are its two or three most readable cuts:
   cuts wider than both their neighbouring cuts (a score of at least ``SMALL_SCORE``, 1) complete them, not next to
   a level already chosen.

The **primary** level (the groups of ``result.groups`` when the number of groups is chosen automatically), among
the levels with at most ``max_groups`` groups: the middle one of three reading levels when its score is at least
``READING_SCORE``; else the distinct level with the highest score; else the finest reading level of a score of at
least ``READING_SCORE`` (or the finest); without a level, the best mean silhouette chooses as before. The choice of
rule was made on ``benchmarks/study_levels.py``: planted two-level worlds and matrices of noise keep exactly what
they found before; in smooth three-scale worlds the families are a level in 22% of the runs (10% before), the
best level's ARI with them 0.73 (0.63).

Each level is ``(k, height, score, distinct)``; ``height`` is the middle of the range of heights that gives ``k``
groups (a cut there gives exactly them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lightning_classim.options import StructureOptions, default_max_groups
from lightning_classim.structure._groups import split_fine_k
from lightning_classim.structure._result import Level, best_k
from lightning_classim.structure._tree import Cuts

__all__ = [
    "COARSE_SILHOUETTE",
    "DISTINCT_SCORE",
    "DISTINCT_SHARE",
    "MAX_LEVELS",
    "READING_SCORE",
    "SMALL_M",
    "SMALL_SCORE",
    "CutPlan",
    "choose_cut",
    "level_cuts",
    "plan_cuts",
    "primary_level",
    "searched_coarse",
]

DISTINCT_SCORE = 12.0
DISTINCT_SHARE = 0.04
READING_SCORE = 2.0
MAX_LEVELS = 4
#: Up to this many classes the levels are the two or three most readable cuts (a score of ``SMALL_SCORE`` will do).
SMALL_M = 30
SMALL_SCORE = 1.0
#: The mean silhouette from which a coarse level that is not distinct is searched for split and failed groups too:
#: Kaufman and Rousseeuw's "reasonable structure" (0.51-0.70; 0.26-0.50 is "weak", and may be a loose cut of a
#: smoothly decaying tree).
COARSE_SILHOUETTE = 0.5
#: Two levels closer than this factor in their numbers of groups are one level (the wider range is kept).
_NEIGHBOUR = 1.5


def level_cuts(z: np.ndarray, max_groups: int | None = None) -> list[tuple[int, float, float, bool]]:
    """The levels of a monotone tree, coarse to fine: ``(k, height, score, distinct)`` (see the module's rule).

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> points = [100.0 * s + 10.0 * g + 0.01 * i for s in range(2) for g in range(2) for i in range(5)]
        >>> [(k, distinct) for k, _, _, distinct in level_cuts(linkage(np.array(points)[:, None], "complete"))]
        [(2, True), (4, True)]
    """
    m = z.shape[0] + 1
    top = default_max_groups(m) if max_groups is None else max_groups
    kmax = min(m // 2, 4 * top)
    if kmax < 2:
        return []
    heights = np.sort(z[:, 2])[::-1]  # H_1 >= H_2 >= ...: k groups for heights in [H_k, H_{k-1})
    ks = np.arange(2, kmax + 1)
    width = heights[ks - 2] - heights[ks - 1]
    span = heights[0] - heights[kmax - 1]
    if not span > 0:
        return []
    score = np.empty(ks.size)
    for i, k in enumerate(ks.tolist()):
        around = width[(ks >= max(2, k // 2)) & (ks <= min(kmax, 2 * k)) & (ks != k)]
        base = float(np.median(around)) if around.size else np.inf
        score[i] = float(width[i]) / max(base, 1e-12 * span)
    middle = (heights[ks - 2] + heights[ks - 1]) / 2

    def near(k: int, kept: list[int]) -> bool:
        return any(c / _NEIGHBOUR <= k <= c * _NEIGHBOUR for c in kept)

    distinct = [i for i in range(ks.size) if score[i] >= DISTINCT_SCORE and width[i] >= DISTINCT_SHARE * span]
    chosen: list[int] = []
    for i in sorted(distinct, key=lambda i: -width[i]):  # widest first
        if not near(int(ks[i]), [int(ks[c]) for c in chosen]) and len(chosen) < MAX_LEVELS:
            chosen.append(i)
    fine_top = max(2, min(top, kmax))
    inside = [i for i in range(ks.size) if ks[i] <= fine_top]
    peaks = [i for i in inside if score[i] >= READING_SCORE
             and all(score[i] > score[j] for j in inside if j != i and near(int(ks[j]), [int(ks[i])]))]  # fmt: skip
    if len(chosen) < 2:  # reading levels: the highest peaks of the score up to max_groups
        for i in sorted(peaks, key=lambda i: -score[i]):
            if len(chosen) >= 2:
                break
            if not near(int(ks[i]), [int(ks[c]) for c in chosen]):
                chosen.append(i)
    if not any(i in distinct for i in chosen):  # a smooth tree (no distinct level): its middle reading
        have = sorted(int(ks[c]) for c in chosen)
        low, high = (have[0], have[-1]) if len(have) >= 2 else (have[0] if have else 1, fine_top + 1)
        between = [i for i in peaks if low < ks[i] < high and not near(int(ks[i]), have) and i not in chosen]
        if between and len(chosen) < MAX_LEVELS:
            chosen.append(max(between, key=lambda i: score[i]))
    if m <= SMALL_M and not any(i in distinct for i in chosen):  # few classes, a smooth tree: two or three cuts
        small = [i for i in inside if score[i] >= SMALL_SCORE and all(score[i] > score[j] for j in inside
                 if abs(int(ks[j]) - int(ks[i])) == 1)]  # fmt: skip
        for i in sorted(small, key=lambda i: -score[i]):
            if len(chosen) >= 3:
                break
            if i not in chosen and all(abs(int(ks[i]) - int(ks[c])) > 1 for c in chosen):
                chosen.append(i)
    out = [(int(ks[i]), float(middle[i]), float(score[i]), i in distinct) for i in chosen]
    return sorted(out)


def primary_level(levels: list[tuple[int, float, float, bool]], max_groups: int) -> int | None:
    """The number of groups of the primary level (see the module's rule), or ``None``.

    Example:
        >>> primary_level([(3, 0.9, 40.0, True), (9, 0.5, 60.0, True)], 30)
        9
        >>> primary_level([(2, 0.9, 4.4, False), (6, 0.5, 3.7, False)], 30)
        6
        >>> primary_level([(40, 0.5, 90.0, True)], 30) is None
        True
        >>> primary_level([(2, 0.9, 6.3, False), (4, 0.7, 3.4, False), (9, 0.5, 6.4, False)], 30)  # the middle
        4
    """
    usable = [level for level in levels if level[0] <= max_groups]
    distinct = [level for level in usable if level[3]]
    if len(usable) == 3 and not distinct and sorted(usable)[1][2] >= READING_SCORE:
        return sorted(usable)[1][0]  # the middle reading of a smooth tree, between its two ends
    if distinct:
        return max(distinct, key=lambda level: level[2])[0]
    reading = [level for level in usable if level[2] >= READING_SCORE] or usable
    return max(level[0] for level in reading) if reading else None


@dataclass(frozen=True)
class CutPlan:
    """What the groups are chosen among (one place for the dense route and the embedding route).

    Attributes:
        asked: the cut ``n_groups`` or ``distance_threshold`` asks for (all zeros when neither is given).
        top: the largest number of groups the automatic choice tries.
        ks: the numbers of groups whose silhouettes the automatic choice compares.
        levels: the levels of the tree, ``(k, height, score, distinct)`` (none for a tree that is not monotone).
        fine_k: the number of groups of the fine cut that every cut used (groups, levels, silhouettes, split-group
            sub-blocks) nests in.
    """

    asked: np.ndarray
    top: int
    ks: range
    levels: list[tuple[int, float, float, bool]]
    fine_k: int

    def wanted(self, opts: StructureOptions, m: int) -> list[int]:
        """The numbers of groups whose mean silhouettes are computed: the levels', and ``ks`` when automatic."""
        tried = set(self.ks) if opts.automatic and m >= 3 else set()
        return sorted({level[0] for level in self.levels if 2 <= level[0] < m} | tried)


def plan_cuts(z: np.ndarray, cuts: Cuts, opts: StructureOptions, m: int) -> CutPlan:
    """The :class:`CutPlan` of a tree and the options."""
    if opts.n_groups is not None:
        asked = cuts.into(opts.n_groups)
    elif opts.distance_threshold is not None:
        asked = cuts.at_height(opts.distance_threshold)
    else:
        asked = np.zeros(m, dtype=np.intp)
    top = default_max_groups(m) if opts.max_groups is None else opts.max_groups
    ks = range(2, max(2, min(top, m - 1)) + 1)
    found = level_cuts(z, top) if cuts.monotone else []
    need = max(ks) if opts.automatic else int(asked.max()) + 1
    need = max([need] + [level[0] for level in found])
    return CutPlan(asked, top, ks, found, max(need, split_fine_k(need, m)))


def choose_cut(
    plan: CutPlan, every: Mapping[int, float], opts: StructureOptions, m: int
) -> tuple[int | None, float, dict[int, float]]:
    """The automatic number of groups, its mean silhouette, and the silhouettes it was chosen among.

    The primary level (``primary="level"``), else the best mean silhouette over ``plan.ks``; ``None`` when
    ``n_groups`` or ``distance_threshold`` chose the cut (or nothing can be chosen).
    """
    scores = {k: v for k, v in every.items() if k in plan.ks} if opts.automatic and m >= 3 else {}
    primary = primary_level(plan.levels, plan.top) if opts.automatic and opts.primary == "level" else None
    if primary is not None:
        return primary, every.get(primary, math.nan), scores
    if scores:
        best = best_k(scores)
        return best, scores[best], scores
    return None, math.nan, scores


def searched_coarse(levels: Sequence[Level], k: int) -> Level | None:
    """The coarsest level, when split and failed groups are searched there too, or ``None``.

    It must be coarser than the cut into ``k`` groups and a structure in earnest: distinct, or with a mean silhouette
    of at least :data:`COARSE_SILHOUETTE`. There a cut near the number of classes still has sub-blocks to compare,
    and the classes that the tree pulls out of their groups at the cut sit in large blocks again.
    """
    if not levels or not 2 <= levels[0].n_groups < k:
        return None
    coarse = levels[0]
    return coarse if coarse.distinct or coarse.silhouette >= COARSE_SILHOUETTE else None
