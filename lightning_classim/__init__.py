"""lightning_classim: class-similarity structure of classifiers, streamed during validation.

See the README for the method (Alsallakh et al., 2020) and the set-up.
"""

from lightning_classim.analysis import (
    FailedGroup,
    GroupSummary,
    SplitGroup,
    StructureResult,
    adjusted_rand_index,
    align_order,
    analyze,
    compare_structures,
    taxonomy_agreement,
)
from lightning_classim.callback import ClassSimilarityCallback
from lightning_classim.functional import class_similarity
from lightning_classim.metric import ClassSimilarity
from lightning_classim.render import plot_dendrogram, plot_matrix, render_heatmap, save_png

__version__ = "0.1.0"

__all__ = [
    "ClassSimilarity",
    "ClassSimilarityCallback",
    "FailedGroup",
    "GroupSummary",
    "SplitGroup",
    "StructureResult",
    "__version__",
    "adjusted_rand_index",
    "align_order",
    "analyze",
    "class_similarity",
    "compare_structures",
    "plot_dendrogram",
    "plot_matrix",
    "render_heatmap",
    "save_png",
    "taxonomy_agreement",
]
