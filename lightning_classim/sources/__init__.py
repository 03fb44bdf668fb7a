"""Views of class similarity to compute beside the score-based one (seeds: Srinivasan; Park; Kim et al.).

A *source* is one view: :class:`ScoresSource` (the paper's score correlation), :class:`HeadSource` (the same for a
linear head's logits, from its input features' covariance, for many classes), :class:`FeaturesSource` (per-class
means or Welch t statistics of a submodule's output), :class:`WeightsSource` (classifier weight rows),
:class:`ConfusionSource` (symmetrised confusion rates), :class:`CooccurrenceSource` (label co-occurrence IoU), or
:class:`MetricSource` (any torchmetrics ``Metric`` of yours). Strings name the built-in ones (``"scores"``,
``"features:layer4"``, ``"welch:layer4"``, ``"weights:fc"``, ``"confusion"``, ``"cooccurrence"``,
``"head:fc"``). Subclass :class:`Source` for a kind of your own.

Their metrics: :class:`LabelCooccurrence`, :class:`ClassFeatureSimilarity`, and the one-shot
:func:`weight_similarity`, :func:`confusion_similarity` and :func:`cosine_similarity_matrix`. Every metric keeps
float64 sums whose cross-process merge is a plain sum, so the DDP result is exact.
"""

from lightning_classim.sources._base import BatchInputs, Source, SourceContext, find_submodule
from lightning_classim.sources._builtin import (
    ConfusionSource,
    CooccurrenceSource,
    FeaturesSource,
    HeadSource,
    MetricSource,
    ScoresSource,
    WeightsSource,
    as_source,
    as_sources,
)
from lightning_classim.sources._metrics import (
    ClassFeatureSimilarity,
    LabelCooccurrence,
    confusion_similarity,
    cosine_similarity_matrix,
    weight_similarity,
)

__all__ = [
    "BatchInputs",
    "ClassFeatureSimilarity",
    "ConfusionSource",
    "CooccurrenceSource",
    "FeaturesSource",
    "HeadSource",
    "LabelCooccurrence",
    "MetricSource",
    "ScoresSource",
    "Source",
    "SourceContext",
    "WeightsSource",
    "as_source",
    "as_sources",
    "confusion_similarity",
    "cosine_similarity_matrix",
    "find_submodule",
    "weight_similarity",
]
