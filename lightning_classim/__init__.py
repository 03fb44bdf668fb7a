"""lightning_classim: class-similarity structure of classifiers, streamed during validation.

See the README and docs/ for the method (Alsallakh et al., 2020) and the set-up. The public names are imported
lazily (PEP 562), so that ``classim report/compare/export`` start without importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Where each public name lives (the lazy table; ``__all__`` lists the same names, tested).
_EXPORTS = {
    "ClassEmbeddings": "lightning_classim.head",
    "ClassSimilarity": "lightning_classim.metric",
    "ClassSimilarityCallback": "lightning_classim.callback",
    "ConfusionSource": "lightning_classim.sources",
    "CooccurrenceSource": "lightning_classim.sources",
    "FailedGroup": "lightning_classim.structure",
    "FeaturesSource": "lightning_classim.sources",
    "GroupSummary": "lightning_classim.structure",
    "HeadSimilarity": "lightning_classim.head",
    "HeatmapOptions": "lightning_classim.render",
    "Level": "lightning_classim.structure",
    "MetricSource": "lightning_classim.sources",
    "Pair": "lightning_classim.structure",
    "ScoresSource": "lightning_classim.sources",
    "Source": "lightning_classim.sources",
    "SplitGroup": "lightning_classim.structure",
    "StructureOptions": "lightning_classim.options",
    "StructureResult": "lightning_classim.structure",
    "WeightsSource": "lightning_classim.sources",
    "adjusted_rand_index": "lightning_classim.structure",
    "agreement": "lightning_classim.structure",
    "align_order": "lightning_classim.structure",
    "analyze": "lightning_classim.structure",
    "class_similarity": "lightning_classim.functional",
    "compare_structures": "lightning_classim.structure",
    "plot_dendrogram": "lightning_classim.render",
    "plot_matrix": "lightning_classim.render",
    "render_heatmap": "lightning_classim.render",
    "save_png": "lightning_classim.render",
    "taxonomy_agreement": "lightning_classim.structure",
}

__all__ = [
    "ClassEmbeddings",
    "ClassSimilarity",
    "ClassSimilarityCallback",
    "ConfusionSource",
    "CooccurrenceSource",
    "FailedGroup",
    "FeaturesSource",
    "GroupSummary",
    "HeadSimilarity",
    "HeatmapOptions",
    "Level",
    "MetricSource",
    "Pair",
    "ScoresSource",
    "Source",
    "SplitGroup",
    "StructureOptions",
    "StructureResult",
    "WeightsSource",
    "__version__",
    "adjusted_rand_index",
    "agreement",
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
    from lightning_classim.callback import (
        ClassSimilarityCallback,
    )
    from lightning_classim.functional import (
        class_similarity,
    )
    from lightning_classim.head import (
        ClassEmbeddings,
        HeadSimilarity,
    )
    from lightning_classim.metric import (
        ClassSimilarity,
    )
    from lightning_classim.options import (
        StructureOptions,
    )
    from lightning_classim.render import (
        HeatmapOptions,
        plot_dendrogram,
        plot_matrix,
        render_heatmap,
        save_png,
    )
    from lightning_classim.sources import (
        ConfusionSource,
        CooccurrenceSource,
        FeaturesSource,
        MetricSource,
        ScoresSource,
        Source,
        WeightsSource,
    )
    from lightning_classim.structure import (
        FailedGroup,
        GroupSummary,
        Level,
        Pair,
        SplitGroup,
        StructureResult,
        adjusted_rand_index,
        agreement,
        align_order,
        analyze,
        compare_structures,
        taxonomy_agreement,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_classim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
