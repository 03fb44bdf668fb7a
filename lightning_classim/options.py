"""The options of the structure analysis: one frozen, validated object shared by ``analyze``, the callback and sources.

:class:`StructureOptions` holds how the tree is built (``method``, ``distance``, ``clip_negative``,
``optimal_ordering``), how it is cut into flat groups (``n_groups``, ``distance_threshold``, ``max_groups``,
``primary``), and how split and failed groups are searched (``split_ratio``, ``find_failed``, ``failed_ratio``,
``failed_membership``, ``seed``). It is checked once, when it is made; ``n_groups`` is checked against the number
of classes when the analysis runs (:meth:`StructureOptions.check_for`).

In LightningCLI YAML it is a nested block of the callback (or of a source)::

    trainer:
      callbacks:
        - class_path: lightning_classim.ClassSimilarityCallback
          init_args:
            num_classes: 365
            options:
              method: average
              n_groups: 40
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from lightning_classim._validation import (
    check_bool,
    check_choice,
    check_finite_number,
    check_fraction,
    check_int,
)

__all__ = ["DistanceKind", "LinkageMethod", "PrimaryChoice", "StructureOptions", "default_max_groups"]

LinkageMethod = Literal["single", "complete", "average", "weighted", "ward", "centroid", "median"]
DistanceKind = Literal["correlation", "rows"]
PrimaryChoice = Literal["level", "silhouette"]


def default_max_groups(m: int) -> int:
    """Largest number of groups the automatic choice tries on ``m`` classes when ``max_groups`` is not given.

    ``max(30, ceil(sqrt(m)))``: 30 up to 900 classes, then growing with ``m`` (64 at 4,000, 100 at 10,000), so that the
    automatic choice can find the many groups of many classes (a fixed 30 merged 40 clear groups of 2,000 classes).

    Example:
        >>> default_max_groups(100), default_max_groups(1000), default_max_groups(10_000)
        (30, 32, 100)
    """
    return max(30, math.isqrt(max(m - 1, 0)) + 1)


@dataclass(frozen=True)
class StructureOptions:
    """How :func:`~lightning_classim.analyze` orders a similarity matrix, cuts it into groups and searches it.

    Args:
        method: linkage method of :func:`scipy.cluster.hierarchy.linkage`: single, complete (the paper's default),
            average, weighted, ward, centroid or median.
        distance: ``"correlation"`` (``1 - r``; ``sqrt(2 (1 - r))`` for ward, centroid and median, which assume
            Euclidean distances) or ``"rows"`` (Euclidean distance between the matrix rows, as the seed notebook).
        clip_negative: set negative similarities to 0 first, as the seed notebook does.
        optimal_ordering: reorder the leaves with scipy's optimal leaf ordering (slow: warns above 1,000 classes
            and is refused above 3,000).
        n_groups: cut the tree into this many flat groups (at most ``m``).
        distance_threshold: cut the tree at this height instead (exclusive with ``n_groups``).
        max_groups: largest number of groups of the automatic choice, used when neither ``n_groups`` nor
            ``distance_threshold`` is given. Default (``None``): ``max(30, ceil(sqrt(m)))``.
        primary: how the automatic choice picks the groups: ``"level"`` (default), the primary level of the tree
            (its most distinct nested cut, or else its fine reading level; see :attr:`StructureResult.levels`), or
            the best mean silhouette over ``2..max_groups`` when no level has at most ``max_groups`` groups;
            ``"silhouette"``: always the best mean silhouette (the choice before levels existed; it picks 2 groups
            on most real classifiers, whose silhouette curves fall with the number of groups).
        split_ratio: two sub-blocks (of a cut into ``4 k`` groups) in different groups form a split group when their
            mean similarity is at least this fraction of the mean cohesion of their two groups, and this fraction of
            the way from the two groups' mean similarity to that cohesion (nested sibling groups are not split);
            in ``(0, 1]``.
        find_failed: look for failed groups (classes alike that the tree scatters over several groups).
        failed_ratio: a candidate is a failed group when the mean similarity of its members in different groups is
            at least this fraction of the way from the mean between-group to the mean within-group similarity; in
            ``(0, 1]``.
        failed_membership: fuzzy membership above which a class belongs to a fuzzy cluster; in ``(0, 1)``.
        seed: seed of the fuzzy clustering and of the sampled spread (the result is deterministic for a seed).

    Raises:
        ValueError: for an unknown ``method`` or ``distance``, a non-bool flag, both ``n_groups`` and
            ``distance_threshold``, an unknown ``primary``, an ``n_groups`` below 1, a ``max_groups`` below 2, a
            ``distance_threshold`` that is not a finite number, ratios outside their ranges or a ``seed`` that is not a
            non-negative int.

    Example:
        >>> from lightning_classim import StructureOptions
        >>> options = StructureOptions(method="average", n_groups=8)
        >>> options.method, options.n_groups, options.max_groups
        ('average', 8, None)
        >>> options.replace(n_groups=None, max_groups=50).max_groups
        50
    """

    method: LinkageMethod = "complete"
    distance: DistanceKind = "correlation"
    clip_negative: bool = False
    optimal_ordering: bool = False
    n_groups: int | None = None
    distance_threshold: float | None = None
    max_groups: int | None = None
    primary: PrimaryChoice = "level"
    split_ratio: float = 0.5
    find_failed: bool = True
    failed_ratio: float = 0.5
    failed_membership: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("method", self.method, LinkageMethod)
        check_choice("distance", self.distance, DistanceKind)
        check_choice("primary", self.primary, PrimaryChoice)
        for flag in ("clip_negative", "optimal_ordering", "find_failed"):
            object.__setattr__(self, flag, check_bool(flag, getattr(self, flag)))
        if self.n_groups is not None and self.distance_threshold is not None:
            raise ValueError(
                f"Expected only one of `n_groups` and `distance_threshold`, but got n_groups={self.n_groups!r} and "
                f"distance_threshold={self.distance_threshold!r}. Drop one of them."
            )
        if self.n_groups is not None:
            object.__setattr__(self, "n_groups", check_int("n_groups", self.n_groups, 1))
        if self.max_groups is not None:
            fix = "Pass None for the default max(30, ceil(sqrt(m)))."
            object.__setattr__(self, "max_groups", check_int("max_groups", self.max_groups, 2, fix))
        if self.distance_threshold is not None:
            fix = "Pass a height of the tree, e.g. 0.5 for complete linkage on 1 - r."
            object.__setattr__(
                self, "distance_threshold", check_finite_number("distance_threshold", self.distance_threshold, fix)
            )
        object.__setattr__(self, "split_ratio", check_fraction("split_ratio", self.split_ratio, 0.5, closed=True))
        object.__setattr__(self, "failed_ratio", check_fraction("failed_ratio", self.failed_ratio, 0.5, closed=True))
        object.__setattr__(
            self, "failed_membership", check_fraction("failed_membership", self.failed_membership, 0.3, closed=False)
        )
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, "Pass an int such as 0."))

    @property
    def automatic(self) -> bool:
        """Whether the number of groups is chosen automatically (neither ``n_groups`` nor ``distance_threshold``)."""
        return self.n_groups is None and self.distance_threshold is None

    def replace(self, **changes: Any) -> StructureOptions:
        """A copy with ``changes`` (checked as at construction).

        Raises:
            TypeError: if a name in ``changes`` is not an option.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"Unknown structure options {unknown}; the options are {sorted(names)}.")
        return dataclasses.replace(self, **changes)

    def check_for(self, m: int) -> None:
        """Check the options that depend on the number of classes ``m``.

        Raises:
            ValueError: if ``n_groups`` is larger than ``m``.
        """
        if self.n_groups is not None and self.n_groups > m:
            raise ValueError(
                f"Expected argument `n_groups` to be an int in 1..{m} (the number of classes), but got "
                f"{self.n_groups!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (for ``run.json`` and the trackers' run parameters)."""
        return dataclasses.asdict(self)
