""":func:`analyze`: order a class-similarity matrix by hierarchical clustering and summarise its groups."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cophenet

import lightning_classim.structure._embedded as _embedded
from lightning_classim._validation import check_names, check_order
from lightning_classim.options import StructureOptions
from lightning_classim.structure._agreement import check_taxonomy, compare_structures, taxonomy_agreement
from lightning_classim.structure._backend import ops, square_matrix_steps
from lightning_classim.structure._embedded import embedded_analysis, unit_vectors
from lightning_classim.structure._failed import failed_groups, join_singletons, merge_failed
from lightning_classim.structure._groups import BlockSums, split_at, summaries, tree_cross_sums
from lightning_classim.structure._levels import choose_cut, plan_cuts, searched_coarse
from lightning_classim.structure._pairs import find_pairs
from lightning_classim.structure._result import FailedGroup, Level, StructureResult
from lightning_classim.structure._silhouette import dense, nested
from lightning_classim.structure._tree import (
    Cuts,
    Distances,
    as_similarity_matrix,
    check_range,
    child_sizes,
    fewer_groups_note,
    leaf_order,
    positions,
    relabel_by_order,
)

__all__ = ["analyze", "notes_not_warned"]

#: Above this many classes, ``optimal_ordering=True`` is refused (it took 76 s at m = 2622 on a 2-core CPU).
OPTIMAL_ORDERING_MAX = 3000
#: Above this many classes, ``optimal_ordering=True`` warns that it will be slow.
OPTIMAL_ORDERING_WARN = 1000
#: From this many classes on, the cophenetic correlation comes from the tree and the fine block sums (below it, from
#: the backend's sums over the tree).
TREE_COPHENET_MIN = 1500

_NOTES_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("lightning_classim_notes_quiet", default=False)


def analyze(
    similarity: Any,
    options: StructureOptions | None = None,
    *,
    class_names: Sequence[str] | None = None,
    order: Any = None,
    previous: StructureResult | None = None,
    taxonomy: Any = None,
    **changes: Any,
) -> StructureResult:
    """Order a class-similarity matrix by hierarchical clustering and summarise its groups.

    The tree is cut into flat groups (a fixed number, a height, or automatically: the primary one of its levels, the
    nested cuts worth reading, or with ``primary="silhouette"`` the best mean silhouette over ``2..max_groups``
    groups); each group is summarised, and split groups (dense off-diagonal blocks)
    and failed groups (similar classes the tree scatters) are searched, at the cut and at the coarsest level when
    that is a structure in earnest (distinct, or a mean silhouette of at least 0.5), and told in the cut's groups.
    See :class:`StructureOptions` for every option and ``docs/analysis.md`` for the algorithms.

    Args:
        similarity: the ``(m, m)`` similarity matrix (numpy or torch), e.g. from ``ClassSimilarity.compute()``:
            symmetric, finite, values in ``[-1, 1]``.
        options: how to build, cut and search the tree (default: ``StructureOptions()``).
        class_names: names of the classes, for summaries.
        order: an externally given order (e.g. a known taxonomy's) used instead of the tree's leaf order.
        previous: the analysis of the previous epoch (or another run): adds ``drift``, ``group_ari`` and
            ``order_distance`` to the metrics and orients the new leaf order to follow the previous one.
        taxonomy: a known structure (see :func:`taxonomy_agreement`): adds ``taxonomy_ari`` and
            ``taxonomy_tree_corr`` to the metrics.
        changes: options to change in ``options``, by name (``analyze(S, n_groups=8)`` is
            ``analyze(S, StructureOptions(n_groups=8))``).

    Returns:
        A :class:`StructureResult`. Its ``metrics`` hold ``cophenetic_corr``, ``n_groups``,
        ``within_minus_between``, ``mean_within``, ``mean_between``, ``offdiag_mean``, ``offdiag_std``,
        ``offdiag_skew``, and, when asked for, ``silhouette``, ``drift``, ``group_ari``, ``order_distance``,
        ``taxonomy_ari`` and ``taxonomy_tree_corr``.

    Raises:
        ValueError: for a matrix that is not square, symmetric and finite with values in ``[-1, 1]`` and
            ``m >= 2``; a bad option (see :class:`StructureOptions`), or ``n_groups`` above ``m``; a bad ``order``;
            ``class_names`` of the wrong length; a ``previous`` result over other classes; ``optimal_ordering``
            above 3,000 classes.
        TypeError: for a keyword that is not an option.

    Example:
        >>> import numpy as np
        >>> from lightning_classim import analyze
        >>> sim = np.array([[1.0, 0.9, 0.1, 0.0], [0.9, 1.0, 0.0, 0.1], [0.1, 0.0, 1.0, 0.8], [0.0, 0.1, 0.8, 1.0]])
        >>> result = analyze(sim, class_names=["cat", "dog", "car", "bus"])
        >>> result.groups.tolist(), result.order.tolist()
        ([0, 0, 1, 1], [0, 1, 2, 3])
        >>> [g.names for g in result.summary]
        [('cat', 'dog'), ('car', 'bus')]
        >>> analyze(sim, n_groups=1).n_groups
        1
    """
    opts = _resolve(options, changes)
    if _is_embeddings(similarity):
        vectors = unit_vectors(similarity)
        if vectors.shape[0] > _embedded.DENSE_MAX:
            return _analyze_embedded(vectors, opts, class_names, order, previous, taxonomy)
        similarity = np.clip(vectors.astype(np.float64) @ vectors.T.astype(np.float64), -1.0, 1.0)
        np.fill_diagonal(similarity, 1.0)
    sim = as_similarity_matrix(similarity)
    m = sim.shape[0]
    names = _checked_inputs(opts, m, class_names, previous, taxonomy)
    if opts.optimal_ordering and m > OPTIMAL_ORDERING_MAX:
        raise ValueError(
            f"Expected `optimal_ordering=True` only up to {OPTIMAL_ORDERING_MAX} classes, but got {m} "
            "(scipy's optimal leaf ordering took 76 s at 2,622 classes). Use `optimal_ordering=False`."
        )
    given_order = check_order(order, m) if order is not None else None
    if opts.clip_negative:
        check_range(sim, float(sim.min()), 0.0)
        sim = np.maximum(sim, 0.0)
    dist = Distances(sim, opts.distance, opts.method)
    check_range(sim, dist.low, dist.top)

    z, tree_order = _tree(dist, opts, m, previous if given_order is None else None)
    leaf = given_order if given_order is not None else tree_order
    cuts = Cuts(z, tree_order)
    labels, block_sums, scores, metrics, found = _groups(sim, dist, z, cuts, opts, m)
    relabel = not (given_order is None and cuts.monotone)
    if relabel:
        labels = relabel_by_order(labels, leaf)
    k = int(labels.max()) + 1
    notes = []
    if (opts.n_groups is not None and k < opts.n_groups) or (opts.automatic and m >= 3 and k == 1):
        notes.append(fewer_groups_note(opts.n_groups, k, z, cuts.monotone, opts.method))
    if not _NOTES_QUIET.get():
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
    summary, mean_within, mean_between = summaries(block_sums, labels, leaf, names)
    mean, std, skew = dist.moments
    metrics.update(n_groups=float(k), mean_within=mean_within, mean_between=mean_between,
                   within_minus_between=mean_within - mean_between, offdiag_mean=mean, offdiag_std=std,
                   offdiag_skew=skew)  # fmt: skip
    del dist
    cohesions = np.array([g.cohesion for g in summary])
    levels = []
    for i, (n, height, score, distinct, silhouette) in enumerate(found, start=1):
        cut = relabel_by_order(cuts.into(n), leaf) if relabel else cuts.into(n)
        level_summary = summaries(block_sums, cut, leaf, names)[0]
        levels.append(Level(n, cut, level_summary, silhouette, height, score, distinct))
        metrics[f"level{i}/n_groups"] = float(n)
        metrics[f"level{i}/silhouette"] = silhouette
    metrics["n_levels"] = float(len(levels))
    # split and failed groups at the cut, and at the coarsest level when it is coarser and a structure in earnest
    coarse = searched_coarse(levels, k)
    split = split_at(block_sums, cuts, labels, cohesions, coarse, opts.split_ratio)
    failed: tuple[FailedGroup, ...] = ()
    blocks = block_sums.blocks(labels)
    if opts.find_failed and k >= 2:
        split_sets = [frozenset(a + b) for a, b in (g.members for g in split)]
        joined = join_singletons(sim, labels)
        joined_blocks = blocks if joined is labels else block_sums.blocks(joined)
        failed_found = failed_groups(sim, joined, joined_blocks, mean_within, mean_between, opts.failed_ratio,
                                     opts.failed_membership, opts.seed, split=split_sets)  # fmt: skip
        if coarse is not None:
            _, coarse_within, coarse_between = summaries(block_sums, coarse.groups, leaf, names)
            failed_found += failed_groups(sim, coarse.groups, block_sums.blocks(coarse.groups), coarse_within,
                                          coarse_between, opts.failed_ratio, opts.failed_membership, opts.seed,
                                          split=split_sets)  # fmt: skip
        failed = merge_failed(sim, labels, failed_found, limit=10)
    row_sums = block_sums.rows.sum(axis=0) if block_sums.rows is not None else sim.sum(axis=1)
    pairs = find_pairs(sim, names, labels, blocks, row_sums, opts.seed)
    for kind in ("near_duplicate", "outlier", "hub"):
        metrics[f"pairs/{kind}"] = float(sum(p.kind == kind for p in pairs))
    result = StructureResult(
        similarity=sim.astype(np.float32),
        order=leaf,
        linkage=z,
        groups=labels,
        summary=summary,
        metrics=metrics,
        split_groups=split,
        failed_groups=failed,
        class_names=tuple(names),
        silhouettes=dict(sorted(scores.items())),
        notes=tuple(notes),
        levels=tuple(levels),
        pairs=pairs,
    )
    if previous is not None:
        metrics.update(compare_structures(result, previous))
    if taxonomy is not None:
        metrics.update(taxonomy_agreement(z, taxonomy, names))
    return result


def _checked_inputs(
    opts: StructureOptions, m: int, class_names: Sequence[str] | None, previous: StructureResult | None, taxonomy: Any
) -> list[str]:
    """The options, names, previous analysis and taxonomy checked against ``m`` classes; the names."""
    opts.check_for(m)
    names = check_names(class_names, m)
    if previous is not None and previous.num_classes != m:
        raise ValueError(
            f"Expected argument `previous` to be an analysis of the same {m} classes, but it has "
            f"{previous.num_classes}. Drop `previous` when the classes change."
        )
    if taxonomy is not None:
        check_taxonomy(taxonomy, m, names)
    return names


def _is_embeddings(value: Any) -> bool:
    """Class embeddings (``ClassEmbeddings``, or anything with ``vectors``) rather than a matrix."""
    return hasattr(value, "vectors") and hasattr(value, "neighbours")


def _analyze_embedded(
    vectors: np.ndarray,
    opts: StructureOptions,
    class_names: Sequence[str] | None,
    order: Any,
    previous: StructureResult | None,
    taxonomy: Any,
) -> StructureResult:
    """:func:`analyze` of class embeddings above ``DENSE_MAX`` classes (see ``_embedded``)."""
    m = vectors.shape[0]
    names = _checked_inputs(opts, m, class_names, previous, taxonomy)
    if order is not None:
        raise ValueError(
            f"Expected no `order` for class embeddings above {_embedded.DENSE_MAX} classes (the order comes from "
            "their tree), but got one. Drop `order`."
        )
    out = embedded_analysis(vectors, opts, names, previous.order if previous is not None else None)
    if not _NOTES_QUIET.get():
        for note in out["notes"]:
            warnings.warn(note, UserWarning, stacklevel=3)
    result = StructureResult(
        similarity=np.zeros((0, 0), dtype=np.float32),
        order=out["order"],
        linkage=out["z"],
        groups=out["labels"],
        summary=out["summary"],
        metrics=out["metrics"],
        split_groups=out["split"],
        class_names=tuple(names),
        silhouettes=dict(sorted(out["scores"].items())),
        notes=tuple(out["notes"]),
        levels=out["levels"],
        pairs=out["pairs"],
        vectors=vectors,
        nearest=out["nearest"],
    )
    if previous is not None:
        result.metrics.update(compare_structures(result, previous))
    if taxonomy is not None:
        result.metrics.update(taxonomy_agreement(out["z"], taxonomy, names))
    return result


def _resolve(options: StructureOptions | None, changes: dict[str, Any]) -> StructureOptions:
    if options is not None and not isinstance(options, StructureOptions):
        raise TypeError(
            f"Expected argument `options` to be a StructureOptions, but got {type(options).__name__}. Pass options "
            "as `StructureOptions(...)` or by name, e.g. `analyze(S, n_groups=8)`."
        )
    base = options if options is not None else StructureOptions()
    return base.replace(**changes) if changes else base


def _tree(
    dist: Distances, opts: StructureOptions, m: int, previous: StructureResult | None
) -> tuple[np.ndarray, np.ndarray]:
    """The linkage tree and its leaf order (oriented to follow ``previous``'s order when given)."""
    z = dist.linkage(opts.method)
    if opts.optimal_ordering:
        if m > OPTIMAL_ORDERING_WARN:
            warnings.warn(
                f"optimal_ordering=True on {m} classes can take minutes (1 s at 1,000, 76 s at 2,622 classes).",
                UserWarning,
                stacklevel=3,
            )
        z = dist.optimal_ordering(z)
    if previous is not None and not opts.optimal_ordering:
        return z, leaf_order(z, positions(previous.order))
    return z, leaf_order(z)


def _groups(
    sim: np.ndarray, dist: Distances, z: np.ndarray, cuts: Cuts, opts: StructureOptions, m: int
) -> tuple[np.ndarray, BlockSums, dict[int, float], dict[str, float], list[tuple[int, float, float, bool, float]]]:
    """The flat groups, the block sums they were found with, the silhouettes tried, the first metrics, the levels.

    The levels are ``(k, height, score, distinct, silhouette)`` (see ``_levels``); without ``n_groups`` or
    ``distance_threshold`` the primary level is the cut (see ``_levels.primary_level``), and without one (or with
    ``primary="silhouette"``) the cut with the best mean silhouette over ``2..max_groups``.

    One pass over the matrix sums it over the clusters of a fine cut that the groups, the silhouette cuts and the
    split-group sub-blocks all nest in (monotone trees).
    """
    plan = plan_cuts(z, cuts, opts, m)
    fine = cuts.into(plan.fine_k) if cuts.ranges is not None else None  # numbered along the order
    block_sums = BlockSums(sim, fine)
    metrics = {"cophenetic_corr": _cophenetic_corr(sim, dist, z, cuts, block_sums, m)}
    wanted = plan.wanted(opts, m)
    every: dict[int, float] = {}
    if wanted:
        if cuts.ranges is not None and dist.linear:
            assert cuts.gaps is not None
            every = nested(block_sums, cuts.gaps, z, cuts.order, wanted)
        else:
            every = dense(dist, cuts, wanted)
    levels = [(k, height, score, distinct, every.get(k, float("nan"))) for k, height, score, distinct in plan.levels]
    raw = plan.asked
    chosen, silhouette, scores = choose_cut(plan, every, opts, m)
    if chosen is not None:
        metrics["silhouette"] = silhouette
        raw = cuts.into(chosen)
    return raw, block_sums, scores, metrics, levels


def _cophenetic_corr(sim: np.ndarray, dist: Distances, z: np.ndarray, cuts: Cuts, sums: BlockSums, m: int) -> float:
    """The cophenetic correlation, from sums over the tree when the distance is ``1 - s``, else from all pairs."""
    cross = None
    if cuts.ranges is not None and dist.linear:
        if m >= TREE_COPHENET_MIN:
            cross = tree_cross_sums(sums, cuts.order, cuts.ranges)
        if cross is None and square_matrix_steps():
            cross = ops().merge_cross_sums(sim, cuts.order, cuts.ranges)
    if cross is not None:
        sizes = child_sizes(z)
        coph_dot_d = float(z[:, 2] @ (sizes[:, 0] * sizes[:, 1] - cross))
    else:
        coph_dot_d = float(np.dot(cophenet(z), dist.condensed))
    return dist.cophenetic_corr(z, coph_dot_d)


@contextlib.contextmanager
def notes_not_warned() -> Iterator[None]:
    """Within this block (in this thread or task), :func:`analyze` keeps its notes in the result without warning.

    For callers that report the notes themselves, such as the callback (once per source, not every epoch).

    Example:
        >>> import numpy as np
        >>> from lightning_classim.structure import analyze, notes_not_warned
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
