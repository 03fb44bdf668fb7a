"""Structure analysis of a class-similarity matrix: ordering, groups, summaries, and structure metrics.

Everything here runs on the CPU with numpy, scipy and compiled kernels (numba; a copy of scipy's
nearest-neighbour-chain linkage, equal to it bit for bit, and the steps around it), is deterministic (the same input
gives the same output), and works up to tens of thousands of classes; class embeddings go to 1,000,000.

The modules, one step each:

* ``_tree``: the matrix check, distances, the linkage tree, its leaf order and flat cuts;
* ``_silhouette``: the mean silhouette of every cut;
* ``_levels``: the nested cuts worth reading (levels), coarse to fine, and the primary one;
* ``_pairs``: the pairs of classes worth a look (near duplicates, outliers off the blocks, hubs);
* ``_groups``: sums over groups, group summaries, split groups;
* ``_failed``: the failed-group search;
* ``_embedded``: the analysis of class embeddings (``HeadSimilarity``) without the ``m x m`` matrix;
* ``_agreement``: agreement between two structures, and with a known taxonomy;
* ``_result``: :class:`StructureResult`, in one shape for memory, disk and checkpoints;
* ``_analyze``: :func:`analyze`, the steps in a row;
* ``_backend``: the one place that chooses the compiled kernels (``_kernels``) or their numpy reference
  (``_reference``).

Choices worth knowing:

* Distance. ``distance="correlation"`` uses ``1 - r``; for the methods that assume Euclidean distances (ward,
  centroid, median) it uses ``sqrt(2 (1 - r))``, which is Euclidean for correlations. ``distance="rows"`` is the
  seed notebook's choice: the Euclidean distance between the rows of the matrix.
* Automatic number of groups: the primary level of the tree (see ``_levels``), or, without one (or with
  ``primary="silhouette"``), the cut into ``k`` groups, ``k`` in ``2..max_groups``, with the best mean silhouette
  (computed on at most 1,000 evenly spaced classes for large ``m``; ties go to the smaller ``k``).
* Group labels run ``0..k-1`` in the order in which the groups appear along the leaf order, so group 0 is the
  first block of the heatmap.
"""

from lightning_classim._stats import adjusted_rand_index
from lightning_classim.options import StructureOptions
from lightning_classim.structure._agreement import agreement, check_taxonomy, compare_structures, taxonomy_agreement
from lightning_classim.structure._analyze import analyze, notes_not_warned
from lightning_classim.structure._embedded import nearest_classes
from lightning_classim.structure._result import (
    FailedGroup,
    GroupSummary,
    Level,
    Pair,
    SplitGroup,
    StructureResult,
    md_escape,
)
from lightning_classim.structure._tree import align_order, as_similarity_matrix, check_linkage

__all__ = [
    "FailedGroup",
    "GroupSummary",
    "Level",
    "Pair",
    "SplitGroup",
    "StructureOptions",
    "StructureResult",
    "adjusted_rand_index",
    "agreement",
    "align_order",
    "analyze",
    "as_similarity_matrix",
    "check_linkage",
    "check_taxonomy",
    "compare_structures",
    "md_escape",
    "nearest_classes",
    "notes_not_warned",
    "taxonomy_agreement",
]
