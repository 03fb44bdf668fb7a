"""The result of the structure analysis, in one shape for memory, disk and checkpoints.

:class:`StructureResult` is what :func:`~lightning_classim.analyze` returns, what the callback writes to disk and
keeps in its checkpoint, and what :func:`~lightning_classim.artifacts.load_snapshot` reads back: four arrays
(:meth:`StructureResult.arrays`) and a JSON-ready summary (:meth:`StructureResult.to_dict`), put back together by
:meth:`StructureResult.from_parts`.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_classim._validation import check_order
from lightning_classim.structure._tree import check_linkage

__all__ = [
    "FailedGroup",
    "GroupSummary",
    "Level",
    "Pair",
    "SplitGroup",
    "StructureResult",
    "best_k",
    "json_float",
    "md_escape",
]

#: The arrays of a result, with the dtype each is stored in.
ARRAY_DTYPES: dict[str, Any] = {"similarity": np.float32, "order": np.int64, "linkage": np.float64, "groups": np.int64}


def json_float(value: float | None) -> float | None:
    """``None`` for NaN, infinity and ``None``, else the value as a float (JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else float(value)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.2f}"


def _group_line(g: GroupSummary, max_members: int, bold: bool = False) -> str:
    """The cells of a group's row after its first cell: group, size, cohesion, separation, nearest, members."""
    shown = ", ".join(md_escape(n) for n in g.names[:max_members])
    if g.size > max_members:
        shown += f", ... (+{g.size - max_members})"
    nearest = "" if g.nearest is None else f"{g.nearest} ({g.nearest_similarity:.2f})"
    group = "" if bold else str(g.group)
    return f"| {group} | {g.size} | {_fmt(g.cohesion)} | {_fmt(g.separation)} | {nearest} | {shown} |"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]()!|~#])")


def md_escape(text: str) -> str:
    r"""A name safe in markdown, table cells included, and in the HTML a markdown renderer makes of it.

    ``&``, ``<`` and ``>`` become entities (no tag or link can be written: TensorBoard's sanitiser keeps
    ``<img src=...>``), markdown's own syntax (links, images, emphasis, code, ``|``) is escaped with ``\\``, and
    line breaks become spaces.

    Example:
        >>> print(md_escape('<img src="x"> [a](b) a|b'))
        &lt;img src="x"&gt; \[a\]\(b\) a\|b
    """
    flat = " ".join(str(text).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def best_k(scores: Mapping[int, float]) -> int:
    """The automatic choice: the best mean silhouette, ties (to 12 decimals) to the smaller number of groups."""
    return max(scores, key=lambda k: (round(scores[k], 12), -k))


def _check_values(sim: np.ndarray, vectors: np.ndarray | None) -> None:
    """A loaded matrix holds correlations (finite, in [-1, 1]); loaded class vectors are finite unit (or zero) rows."""
    if vectors is not None:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)) if vectors.size else np.ones(0)
        if not np.isfinite(norms).all() or (np.minimum(np.abs(norms - 1), norms) > 1e-3).any():
            raise ValueError("Expected unit class vectors (finite rows of norm 1, or 0 for a constant class), but "
                             "some rows are not.")  # fmt: skip
        return
    if sim.size and (not np.isfinite(sim).all() or np.abs(sim).max() > 1 + 1e-3):
        raise ValueError("Expected a similarity matrix of correlations (finite values in [-1, 1]), but it holds "
                         "others.")  # fmt: skip


def _check_indices(result: StructureResult) -> None:
    """Every class and group index of a loaded result is in range, and the group table matches the labels."""
    m, groups = result.num_classes, result.groups
    k = int(groups.max()) + 1 if m else 0

    def classes(members: Sequence[int], what: str, low: int = 0) -> None:
        if any(not low <= i < m for i in members):
            raise ValueError(f"Expected the classes of {what} in 0..{m - 1}, but got {sorted(members)[:8]}.")

    def labels(values: Sequence[int], what: str) -> None:
        if any(not 0 <= g < max(k, 1) for g in values):
            raise ValueError(f"Expected the groups of {what} in 0..{k - 1}, but got {sorted(values)[:8]}.")

    seen = np.zeros(m, dtype=np.int64)
    for g in result.summary:
        classes(g.members, f"group {g.group}")
        labels([g.group], "the group table")
        if any(int(groups[i]) != g.group for i in g.members):
            raise ValueError(f"Expected the group table to match groups.npy, but group {g.group} does not.")
        seen[list(g.members)] += 1
    if result.summary and (seen != 1).any():
        raise ValueError("Expected the group table to hold every class once, but it does not.")
    for s in result.split_groups:
        classes([*s.members[0], *s.members[1]], "a split group")
        labels(list(s.groups), "a split group")
    for f in result.failed_groups:
        classes(f.members, "a failed group")
        labels(list(f.groups), "a failed group")
    for p in result.pairs:
        classes([p.i], f"the pair {p.a!r:.40}")
        classes([p.j], f"the pair {p.a!r:.40}", low=-1 if p.kind == "hub" else 0)
    for level in result.levels:
        if level.groups.shape != (m,) or (m and (level.groups.min() < 0 or level.groups.max() >= m)):
            raise ValueError(f"Expected each level's groups as {m} labels in 0..{m - 1}, but a level has others.")


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
            "cohesion": json_float(self.cohesion),
            "separation": json_float(self.separation),
            "nearest": self.nearest,
            "nearest_similarity": json_float(self.nearest_similarity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupSummary:
        """The inverse of :meth:`to_dict`."""
        return cls(
            group=int(data["group"]),
            members=tuple(int(i) for i in data["members"]),
            names=tuple(str(n) for n in data["names"]),
            size=int(data["size"]),
            cohesion=_nan(data.get("cohesion")),
            separation=_nan(data.get("separation")),
            nearest=None if data.get("nearest") is None else int(data["nearest"]),
            nearest_similarity=_nan(data.get("nearest_similarity")),
        )


@dataclass(frozen=True)
class SplitGroup:
    """Two sets of classes in different groups whose off-diagonal block is dense (paper, section 3.2).

    Attributes:
        groups: the two groups the sets belong to.
        members: the classes of each set.
        similarity: mean similarity between the two sets.
        cohesion: mean cohesion of the two groups it was found between (the cut's, or the coarse level's when the
            coarsest level is searched too: see :func:`~lightning_classim.analyze`); ``similarity / cohesion`` near
            1 means that the two sets are as similar as classes within one group usually are.
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
            "similarity": json_float(self.similarity),
            "cohesion": json_float(self.cohesion),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitGroup:
        """The inverse of :meth:`to_dict`."""
        a, b = (tuple(int(i) for i in part) for part in data["members"])
        g0, g1 = (int(g) for g in data["groups"])
        return cls(groups=(g0, g1), members=(a, b), similarity=_nan(data.get("similarity")),
                   cohesion=_nan(data.get("cohesion")))  # fmt: skip


@dataclass(frozen=True)
class FailedGroup:
    """Mutually similar classes that the tree scatters across several groups (paper, section 3.2).

    Found among the pairs of classes in different groups whose residual (similarity minus the mean similarity of
    their two groups) stands out from the noise (see :mod:`lightning_classim.structure`).

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
            "similarity": json_float(self.similarity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailedGroup:
        """The inverse of :meth:`to_dict`."""
        return cls(members=tuple(int(i) for i in data["members"]), groups=tuple(int(g) for g in data["groups"]),
                   similarity=_nan(data.get("similarity")))  # fmt: skip


@dataclass(frozen=True, eq=False)
class Level:
    """One nested cut of the tree (see :func:`~lightning_classim.analyze`'s levels).

    Attributes:
        n_groups: number of groups.
        groups: the group of each class (original class order; numbered along the leaf order).
        summary: one :class:`GroupSummary` per group, in leaf order.
        silhouette: the mean silhouette of the cut (NaN when not computed).
        height: a tree height that gives this cut (the middle of the heights that do).
        score: how far its range of heights stands out from its neighbours' (the range over the median range of
            the cuts into ``k/2`` to ``2k`` groups).
        distinct: whether it stands out on its own (score at least 12 and at least 4% of the heights); ``False``
            for a reading level, the most distinct cut of its band of scales in a smoothly decaying tree.
    """

    n_groups: int
    groups: np.ndarray
    summary: tuple[GroupSummary, ...]
    silhouette: float
    height: float
    score: float
    distinct: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (groups as a list)."""
        return {
            "n_groups": self.n_groups,
            "groups": [int(g) for g in self.groups],
            "summary": [g.to_dict() for g in self.summary],
            "silhouette": json_float(self.silhouette),
            "height": json_float(self.height),
            "score": json_float(self.score),
            "distinct": self.distinct,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Level:
        """The inverse of :meth:`to_dict`."""
        return cls(n_groups=int(data["n_groups"]), groups=np.asarray(data["groups"], dtype=np.intp),
                   summary=tuple(GroupSummary.from_dict(g) for g in data["summary"]),
                   silhouette=_nan(data.get("silhouette")), height=_nan(data.get("height")),
                   score=_nan(data.get("score")), distinct=bool(data.get("distinct", False)))  # fmt: skip


@dataclass(frozen=True)
class Pair:
    """A pair of classes worth a look (or one class, for a hub).

    Attributes:
        kind: ``"near_duplicate"`` (two classes far more alike than either is to any other class), ``"outlier"``
            (two classes in different groups far more alike than their groups are) or ``"hub"`` (a class alike to
            far more classes than the others are: the paper's star and flame patterns).
        a: the first class's name.
        b: the second class's name (``""`` for a hub).
        i: the first class's index.
        j: the second class's index (-1 for a hub).
        score: how far it stands out (see :func:`~lightning_classim.analyze`): a distance ratio for near duplicates,
            robust z-scores for outliers and hubs.
        similarity: the pair's similarity (a hub's mean similarity to all other classes).
    """

    kind: str
    a: str
    b: str
    i: int
    j: int
    score: float
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": self.kind, "a": self.a, "b": self.b, "i": self.i, "j": self.j,
                "score": json_float(self.score), "similarity": json_float(self.similarity)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pair:
        """The inverse of :meth:`to_dict`."""
        return cls(kind=str(data["kind"]), a=str(data["a"]), b=str(data["b"]), i=int(data["i"]), j=int(data["j"]),
                   score=_nan(data.get("score")), similarity=_nan(data.get("similarity")))  # fmt: skip

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, a, b)``: the same pair in two epochs has the same key."""
        return (self.kind, self.a, self.b)


@dataclass(frozen=True, eq=False)
class StructureResult:
    """The result of :func:`~lightning_classim.analyze`: order, tree, groups, summaries and metrics of a matrix.

    Attributes:
        similarity: the analysed ``(m, m)`` matrix (float32, original class order, after clipping if asked).
        order: the leaf order, a permutation of ``range(m)``: ``similarity[np.ix_(order, order)]`` is the heatmap.
        linkage: the scipy linkage matrix ``(m - 1, 4)``.
        groups: flat group label of each class, in the original class order.
        summary: one :class:`GroupSummary` per group, in leaf order.
        metrics: structure scalars (see :func:`~lightning_classim.analyze`).
        split_groups: dense off-diagonal blocks between groups.
        failed_groups: mutually similar classes scattered over several groups.
        class_names: the class names.
        silhouettes: the mean silhouette of every cut the automatic choice tried, ``{k: score}`` (empty when
            ``n_groups`` or ``distance_threshold`` chose the groups).
        notes: what the analysis could not do as asked, in words (e.g. a cut that gave fewer groups than asked, and
            why); :func:`~lightning_classim.analyze` also issues each as a ``UserWarning``.
        levels: the nested cuts of the tree worth reading, coarse to fine (see :func:`~lightning_classim.analyze`);
            empty when none stands out.
        pairs: the pairs of classes worth a look: near duplicates, outliers off the diagonal blocks, hubs.
        vectors: for an analysis of class embeddings above 4,096 classes (see :func:`~lightning_classim.analyze`),
            the ``(m, r)`` float32 unit class vectors whose dot products are the matrix; ``similarity`` is then
            empty (``(0, 0)``): ask :meth:`matrix` for rows, :meth:`heatmap_matrix` for the picture.
        nearest: for an embedded result, the 16 nearest classes of every class that the analysis found
            (``(indices, similarities)``, ``(m, 16)`` each, most similar first); kept in memory for the explorer, not
            saved (``None`` after loading).
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
    levels: tuple[Level, ...] = ()
    pairs: tuple[Pair, ...] = ()
    vectors: np.ndarray | None = None
    nearest: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        """Number of classes ``m``."""
        return int(self.order.shape[0])

    @property
    def embedded(self) -> bool:
        """Whether the result holds class vectors instead of the ``m x m`` matrix (see :attr:`vectors`)."""
        return self.vectors is not None and self.similarity.size == 0

    def matrix(self, rows: Any = None) -> np.ndarray:
        """The similarity matrix, or its ``rows`` (indices or a slice): ``(len(rows), m)`` float32, diagonal 1.

        From :attr:`similarity`, or from :attr:`vectors` for an embedded result (``4 m`` bytes a row).
        """
        index = np.arange(self.num_classes)[rows if rows is not None else slice(None)]
        if not self.embedded:
            return np.asarray(self.similarity[index])
        assert self.vectors is not None
        out = np.clip(self.vectors[index] @ self.vectors.T, -1.0, 1.0)
        out[np.arange(index.shape[0]), index] = 1.0
        return out

    def heatmap_matrix(self, max_pixels: int = 1024) -> np.ndarray:
        """The matrix in leaf order, as the heatmap draws it: at most ``max_pixels`` a side.

        Above ``max_pixels`` classes, the exact mean of each block of ``ceil(m / max_pixels)`` consecutive classes
        along the order with each other block (the diagonal's 1s included), as
        :func:`~lightning_classim.render.render_heatmap` averages; for an embedded result, from the blocks' sum vectors
        (``O(m r)``, no ``m x m`` matrix).
        """
        m = self.num_classes
        factor = -(-m // max(1, int(max_pixels)))
        if not self.embedded:
            if factor == 1:
                return np.asarray(self.similarity[np.ix_(self.order, self.order)])
            from lightning_classim.render import block_mean

            return block_mean(np.asarray(self.similarity[np.ix_(self.order, self.order)]), factor)
        from lightning_classim.render import vector_block_mean

        assert self.vectors is not None
        return vector_block_mean(self.vectors, self.order, np.arange(0, m, factor))

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
        return best_k(self.silhouettes) == top and top < self.num_classes - 1

    def outlined_cuts(self) -> tuple[np.ndarray | None, np.ndarray]:
        """The two cuts a picture outlines and the group table nests: ``(coarse, fine)`` group labels.

        ``fine`` is :attr:`groups` and ``coarse`` the coarsest level with fewer groups; when no level is coarser,
        ``coarse`` is :attr:`groups` and ``fine`` the next finer level; without one, ``coarse`` is ``None``. Cuts of
        one monotone tree nest: each fine group lies inside one coarse group.
        """
        coarser = [level for level in self.levels if level.n_groups < self.n_groups]
        if coarser:
            return coarser[0].groups, self.groups
        finer = [level for level in self.levels if level.n_groups > self.n_groups]
        if finer:
            return self.groups, finer[0].groups
        return None, self.groups

    # ------------------------------------------------------------------------------------------ one shape

    def arrays(self) -> dict[str, np.ndarray]:
        """The four arrays, in the dtypes they are stored in (``similarity``, ``order``, ``linkage``, ``groups``).

        An embedded result (see :attr:`vectors`) has ``vectors`` (``(m, r)`` float32) in place of ``similarity``.
        """
        out = {name: np.asarray(getattr(self, name)).astype(dtype, copy=False) for name, dtype in ARRAY_DTYPES.items()}
        if self.embedded:
            del out["similarity"]
            out["vectors"] = np.asarray(self.vectors, dtype=np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no matrices): metrics, groups, split and failed groups, silhouettes and notes."""
        names = self.class_names
        return {
            "num_classes": self.num_classes,
            "n_groups": self.n_groups,
            "metrics": {k: json_float(v) for k, v in self.metrics.items()},
            "groups": [g.to_dict() for g in self.summary],
            "split_groups": [s.to_dict(names) for s in self.split_groups],
            "failed_groups": [f.to_dict(names) for f in self.failed_groups],
            "silhouettes": {str(k): json_float(v) for k, v in self.silhouettes.items()},
            "notes": list(self.notes),
            "levels": [level.to_dict() for level in self.levels],
            "pairs": [pair.to_dict() for pair in self.pairs],
        }

    @classmethod
    def from_parts(
        cls, arrays: Mapping[str, Any], summary: Mapping[str, Any], class_names: Sequence[str]
    ) -> StructureResult:
        """Put a result back together from :meth:`arrays`, :meth:`to_dict` and the class names.

        Raises:
            ValueError: if the parts do not agree (shapes, names), the order is not a permutation, the linkage not a
                tree, a group label is out of range, or the summary is not one ``to_dict()`` writes.
        """
        order, link, groups = (np.asarray(arrays[k]) for k in ("order", "linkage", "groups"))
        vectors = None
        if "similarity" not in arrays and "vectors" in arrays:  # an embedded result
            vectors = np.asarray(arrays["vectors"])
            m = order.shape[0] if order.ndim == 1 else -1
            if vectors.ndim != 2 or vectors.shape[0] != m or not np.issubdtype(vectors.dtype, np.floating):
                raise ValueError(
                    f"Expected class vectors of shape ({m}, r) for {m} classes, but got {vectors.dtype} "
                    f"{vectors.shape}."
                )
            sim = np.zeros((0, 0), dtype=np.float32)
        else:
            sim = np.asarray(arrays["similarity"])
            m = sim.shape[0] if sim.ndim == 2 else -1
        if not isinstance(class_names, (list, tuple)) or not isinstance(summary, Mapping):
            raise ValueError(
                f"Expected the class names as a list and the summary as a dict, but got {type(class_names).__name__} "
                f"and {type(summary).__name__}."
            )
        if (
            (sim.shape != (m, m) and vectors is None)
            or order.shape != (m,)
            or groups.shape != (m,)
            or len(class_names) != m
        ):
            raise ValueError(
                f"Expected the parts of one result, but got similarity {sim.shape}, order {order.shape}, groups "
                f"{groups.shape} and {len(class_names)} class names."
            )
        if not np.issubdtype(sim.dtype, np.floating):
            raise ValueError(f"Expected a similarity matrix of floats, but got dtype {sim.dtype}.")
        if link.shape != (m - 1, 4):
            raise ValueError(f"Expected a linkage matrix of shape ({m - 1}, 4) for {m} classes, but got {link.shape}.")
        check_order(order, m)
        check_linkage(link)
        if not np.issubdtype(groups.dtype, np.integer) or (m and (groups.min() < 0 or groups.max() >= m)):
            raise ValueError(f"Expected group labels in 0..{m - 1}, but got {groups.min()}..{groups.max()}.")
        _check_values(sim, vectors)
        try:
            result = cls(
                similarity=sim.astype(np.float32, copy=False),
                order=order.astype(np.intp),
                linkage=link.astype(np.float64, copy=False),
                groups=groups.astype(np.intp),
                summary=tuple(GroupSummary.from_dict(g) for g in summary["groups"]),
                metrics={str(k): _nan(v) for k, v in summary["metrics"].items()},
                split_groups=tuple(SplitGroup.from_dict(s) for s in summary.get("split_groups", [])),
                failed_groups=tuple(FailedGroup.from_dict(f) for f in summary.get("failed_groups", [])),
                class_names=tuple(str(n) for n in class_names),
                silhouettes={int(k): _nan(v) for k, v in summary.get("silhouettes", {}).items()},
                notes=tuple(str(n) for n in summary.get("notes", [])),
                levels=tuple(Level.from_dict(level) for level in summary.get("levels", [])),
                pairs=tuple(Pair.from_dict(pair) for pair in summary.get("pairs", [])),
                vectors=None if vectors is None else vectors.astype(np.float32, copy=False),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise ValueError(
                f"Expected a result summary as `StructureResult.to_dict()` writes it, but: {err!r:.300}"
            ) from err
        _check_indices(result)
        return result

    # ------------------------------------------------------------------------------------------ tables

    def group_rows(self, max_members: int = 15) -> list[list[Any]]:
        """The group table, one row per group: group, coarse group, size, cohesion, separation, nearest group, members.

        Members are the first ``max_members`` names, then ``... (+n)``; NaN is ``None``.
        """
        coarse, fine = self.outlined_cuts()
        nested = coarse is not None and fine is self.groups
        rows = []
        for g in self.summary:
            shown = ", ".join(g.names[:max_members])
            if g.size > max_members:
                shown += f", ... (+{g.size - max_members})"
            parent = int(coarse[g.members[0]]) if nested and coarse is not None and g.members else None
            rows.append([g.group, parent, g.size, json_float(g.cohesion), json_float(g.separation), g.nearest, shown])
        return rows

    #: The columns of :meth:`group_rows` (``coarse``: the group of the coarsest level with fewer groups, or None).
    GROUP_COLUMNS = ("group", "coarse", "size", "cohesion", "separation", "nearest", "members")

    def _summaries_of(self, labels: np.ndarray) -> tuple[GroupSummary, ...]:
        """The summaries of a cut: :attr:`summary` for :attr:`groups`, else the level's."""
        if labels is self.groups:
            return self.summary
        return next(level.summary for level in self.levels if level.groups is labels)

    def pair_rows(self) -> list[list[Any]]:
        """The pairs table, one row per pair: kind, class, other class (empty for a hub), score, similarity."""
        return [[p.kind.replace("_", " "), p.a, p.b, json_float(p.score), json_float(p.similarity)] for p in self.pairs]

    #: The columns of :meth:`pair_rows`.
    PAIR_COLUMNS = ("kind", "class", "with", "score", "similarity")

    def pairs_markdown(self) -> str:
        """The pairs worth a look as a markdown table ("No pair stands out." without any)."""
        if not self.pairs:
            return "No pair stands out."
        lines = [
            "Pairs worth a look:",
            "",
            "| kind | class | with | score | similarity |",
            "| --- | --- | --- | ---: | ---: |",
        ]
        for p in self.pairs:
            lines.append(f"| {p.kind.replace('_', ' ')} | {md_escape(p.a)} | {md_escape(p.b)} | "
                         f"{_fmt(p.score)} | {_fmt(p.similarity)} |")  # fmt: skip
        return "\n".join(lines)

    def levels_line(self) -> str:
        """One line that names the levels, coarse to fine, and the cut the groups are (empty without levels)."""
        if not self.levels:
            return ""
        shown = " > ".join(f"{level.n_groups} groups" for level in self.levels)
        kind = "distinct height gaps" if all(level.distinct for level in self.levels) else "reading levels"
        if any(level.distinct for level in self.levels) and not all(level.distinct for level in self.levels):
            kind = "distinct and reading levels"
        line = f"Levels: {shown} ({kind}); the groups below are the cut into {self.n_groups}."
        silhouettes = [level.silhouette for level in self.levels if math.isfinite(level.silhouette)]
        if not any(level.distinct for level in self.levels) and silhouettes and max(silhouettes) < 0.1:
            line += " No level stands out and every silhouette is below 0.1: the blocks are weak."
        return line

    def summary_markdown(self, max_members: int = 15) -> str:
        """The group summary as markdown (for TensorBoard's text plugin and reports).

        The levels line; the group table, each group of the fine cut under its coarse group (see
        :meth:`outlined_cuts`); split and failed groups; the pairs worth a look; notes.
        """
        lines = []
        if self.levels:
            lines += [self.levels_line(), ""]
        coarse, fine = self.outlined_cuts()
        if coarse is None:
            lines += ["| group | size | cohesion | separation | nearest group | members |",
                      "| ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
            lines += [_group_line(g, max_members) for g in self.summary]
        else:
            coarse_summary, fine_summary = self._summaries_of(coarse), self._summaries_of(fine)
            lines += ["| coarse | group | size | cohesion | separation | nearest group | members |",
                      "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
            for c in coarse_summary:
                lines.append(f"| **{c.group}** {_group_line(c, max_members, bold=True)}")
                by_group = {g.group: g for g in fine_summary}
                inside = sorted({int(fine[i]) for i in c.members})
                lines += [f"| {_group_line(by_group[f], max_members)}" for f in inside]
        names = self.class_names
        for s in self.split_groups:
            a, b = ([md_escape(names[i]) for i in part[:max_members]] for part in s.members)
            lines.append(
                f"\nSplit group between groups {s.groups[0]} and {s.groups[1]} (similarity {s.similarity:.2f}): "
                f"{', '.join(a)} <-> {', '.join(b)}"
            )
        for f in self.failed_groups:
            shown_names = [md_escape(names[i]) for i in f.members[:max_members]]
            lines.append(
                f"\nFailed group over groups {list(f.groups)} (similarity {f.similarity:.2f}): {', '.join(shown_names)}"
            )
        if self.pairs:
            lines += ["", self.pairs_markdown()]
        lines.extend(f"\nNote: {md_escape(note)}" for note in self.notes)
        if self.choice_at_max_groups:
            lines.append(
                f"\nThe automatic choice picked {max(self.silhouettes)} groups, the most it tried: there may be more. "
                "Raise `max_groups`."
            )
        return "\n".join(lines)
