"""lightning_classim: class-similarity structure of classifiers, streamed during validation.

See the README for the method (Alsallakh et al., 2020) and the set-up. The public names are imported lazily
(PEP 562), so that ``classim report/compare/export`` start without importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ClassSimilarity": "lightning_classim.metric",
    "ClassSimilarityCallback": "lightning_classim.callback",
    "FailedGroup": "lightning_classim.analysis",
    "GroupSummary": "lightning_classim.analysis",
    "Source": "lightning_classim.callback",
    "SplitGroup": "lightning_classim.analysis",
    "StructureResult": "lightning_classim.analysis",
    "adjusted_rand_index": "lightning_classim.analysis",
    "align_order": "lightning_classim.analysis",
    "analyze": "lightning_classim.analysis",
    "class_similarity": "lightning_classim.functional",
    "compare_structures": "lightning_classim.analysis",
    "plot_dendrogram": "lightning_classim.render",
    "plot_matrix": "lightning_classim.render",
    "render_heatmap": "lightning_classim.render",
    "save_png": "lightning_classim.render",
    "taxonomy_agreement": "lightning_classim.analysis",
}

__all__ = [
    "ClassSimilarity",
    "ClassSimilarityCallback",
    "FailedGroup",
    "GroupSummary",
    "Source",
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

if TYPE_CHECKING:  # pragma: no cover
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
    from lightning_classim.callback import ClassSimilarityCallback, Source
    from lightning_classim.functional import class_similarity
    from lightning_classim.metric import ClassSimilarity
    from lightning_classim.render import plot_dendrogram, plot_matrix, render_heatmap, save_png


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_classim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
