"""How far two structures agree, and how far a learned tree matches a known taxonomy.

:func:`agreement` is the one place where two analyses are compared (the correlation of their matrices, the adjusted
Rand index of their groups and the correlation of their trees): the drift between epochs, the agreement of a source
with the primary one, a run against its reference and ``classim compare`` all use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cophenet

from lightning_classim._stats import adjusted_rand_index, condensed, offdiag_pearson, pearson
from lightning_classim.structure._embedded import gram_offdiag_corr
from lightning_classim.structure._result import StructureResult
from lightning_classim.structure._tree import cut_maxclust, positions

__all__ = ["agreement", "check_taxonomy", "compare_structures", "taxonomy_agreement"]


def agreement(a: StructureResult, b: StructureResult, trees: bool = True) -> dict[str, float]:
    """How far two analyses of the same classes agree.

    Args:
        a: one analysis.
        b: the other, over the same classes.
        trees: also compare the trees (``cophenetic_corr``; ``O(m^2)`` memory).

    Returns:
        ``matrix_corr`` (Pearson correlation of the two matrices' off-diagonal values), ``group_ari`` (adjusted Rand
        index of the two groupings) and, with ``trees``, ``cophenetic_corr`` (Pearson correlation of the two trees'
        cophenetic distances).

    Raises:
        ValueError: if the two analyses have different numbers of classes.
    """
    if a.num_classes != b.num_classes:
        raise ValueError(
            f"Expected both analyses to cover the same classes, but got {a.num_classes} and {b.num_classes} classes."
        )
    out = {
        "matrix_corr": matrix_corr(a, b),
        "group_ari": adjusted_rand_index(a.groups, b.groups),
    }
    if trees:
        out["cophenetic_corr"] = (
            pearson(cophenet(a.linkage), cophenet(b.linkage)) if a.num_classes <= TREE_CORR_MAX else float("nan")
        )
    return out


#: Above this many classes, the correlations of two trees' cophenetic distances (``m^2 / 2`` of them) are not
#: computed (NaN).
TREE_CORR_MAX = 20_000


def matrix_corr(a: StructureResult, b: StructureResult) -> float:
    """Pearson correlation of the off-diagonal values of two analyses' matrices (from their vectors when embedded)."""
    if not a.embedded and not b.embedded:
        return offdiag_pearson(a.similarity, b.similarity)
    if a.embedded and b.embedded:
        assert a.vectors is not None and b.vectors is not None
        return gram_offdiag_corr(a.vectors, b.vectors)
    if a.num_classes > TREE_CORR_MAX:
        return float("nan")
    return offdiag_pearson(a.matrix(), b.matrix())


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
    both = agreement(current, previous, trees=False)
    m = current.num_classes
    moved = np.abs(positions(current.order) - positions(previous.order))
    return {
        "drift": 1.0 - both["matrix_corr"],
        "group_ari": both["group_ari"],
        "order_distance": float(moved.mean() / m),
    }


def check_taxonomy(taxonomy: Any, m: int, class_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Validate a taxonomy for ``m`` classes and return its levels (label arrays, coarsest first).

    Raises:
        ValueError: if a level does not give one label per class, or a dict taxonomy misses class names.
    """
    names = list(class_names) if class_names is not None else [str(i) for i in range(m)]
    return taxonomy_levels(taxonomy, m, names)


def taxonomy_levels(taxonomy: Any, m: int, class_names: Sequence[str]) -> list[np.ndarray]:
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
        has, and that top level; with more levels, ``taxonomy_ari/level2``, ``taxonomy_ari/level3``, ... the same
        for each finer level; ``taxonomy_tree_corr``: Pearson correlation between the tree's cophenetic distances
        and the taxonomy's tree distances (the number of levels below the deepest common ancestor; NaN above 20,000
        classes).

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> points = np.array([0.0, 0.1, 1.0, 1.1, 10.0, 10.1, 11.0, 11.1])[:, None]
        >>> tax = [["a"] * 4 + ["b"] * 4, ["a1", "a1", "a2", "a2", "b1", "b1", "b2", "b2"]]
        >>> out = taxonomy_agreement(linkage(points, "complete"), tax)
        >>> out["taxonomy_ari"], out["taxonomy_ari/level2"]
        (1.0, 1.0)
    """
    m = linkage.shape[0] + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(m)]
    levels = taxonomy_levels(taxonomy, m, names)
    top = levels[0]
    k = int(top.max()) + 1
    ari = adjusted_rand_index(cut_maxclust(linkage, k), top) if k >= 2 else float("nan")
    out = {"taxonomy_ari": ari}
    for depth, level in enumerate(levels[1:], start=2):
        n = int(level.max()) + 1
        out[f"taxonomy_ari/level{depth}"] = adjusted_rand_index(cut_maxclust(linkage, n), level) if n >= 2 else math.nan
    if m > TREE_CORR_MAX:
        out["taxonomy_tree_corr"] = float("nan")
        return out
    coph = cophenet(linkage)
    tax = np.zeros_like(coph)
    for level in levels:
        lab = level.astype(np.float64)
        differ = np.abs(condensed(lab[:, None] - lab[None, :]))
        tax += differ > 0
    out["taxonomy_tree_corr"] = pearson(coph, tax)
    return out
