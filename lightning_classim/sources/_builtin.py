"""The built-in sources, and the strings that name them (``"scores"``, ``"features:layer4"``, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_classim.head import HeadSimilarity, check_finite_head
from lightning_classim.metric import ClassSimilarity
from lightning_classim.options import StructureOptions
from lightning_classim.sources._base import BatchInputs, Source, SourceContext, find_submodule
from lightning_classim.sources._metrics import (
    ClassFeatureSimilarity,
    LabelCooccurrence,
    confusion_similarity,
    weight_similarity,
)

__all__ = [
    "ConfusionSource",
    "CooccurrenceSource",
    "FeaturesSource",
    "HeadSource",
    "MetricSource",
    "ScoresSource",
    "WeightsSource",
    "as_source",
    "as_sources",
]

_BUILT_IN = (
    "'scores', 'confusion', 'cooccurrence', 'features:<module>', 'welch:<module>', 'weights:<module>' or "
    "'head:<module>'"
)
_MODULE_KINDS = ("features", "welch", "weights")


class ScoresSource(Source):
    """The paper's view: the Pearson correlation of the classifier's scores (``ClassSimilarity``).

    Scores are the callback's ``scores`` (logits, probabilities or ranks), with its ``multilabel`` and
    ``nan_strategy``. The string ``"scores"`` names it.

    Args:
        options: this source's analysis options (default: the callback's).
    """

    needs_scores = True

    def __init__(self, options: StructureOptions | None = None) -> None:
        super().__init__("scores", options)

    def make_metric(self, ctx: SourceContext) -> Metric:
        return ClassSimilarity(ctx.num_classes, scores=ctx.scores, multilabel=ctx.multilabel,
                               nan_strategy=ctx.nan_strategy)  # fmt: skip

    def update(self, metric: Metric | None, inputs: BatchInputs, ctx: SourceContext) -> Metric | None:
        assert metric is not None and inputs.scores is not None
        metric.update(inputs.scores)
        return metric

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Tensor:
        assert metric is not None
        return metric.compute()

    def undefined_classes(self, metric: Metric | None) -> list[int]:
        return metric.constant_classes.tolist() if isinstance(metric, ClassSimilarity) else []


class HeadSource(Source):
    """The score correlation of a linear head's logits, exactly, without the ``m x m`` matrix (:class:`HeadSimilarity`).

    A forward hook reads the head's *input* features ``(N, D)`` in every validation step; at the end of the epoch the
    head's ``weight`` (and ``bias``) are read and :meth:`HeadSimilarity.compute` gives the class embeddings, which
    :func:`~lightning_classim.analyze` analyses without the matrix above 4,096 classes. The same matrix as
    ``"scores"`` with ``scores="logits"`` (to 1e-5), at ``8 D^2`` bytes of state whatever ``m``. The string
    ``"head:<module>"`` names it, and ``ClassSimilarityCallback(head="<module>")`` puts it first in place of
    ``"scores"``.

    Args:
        module: the head: a submodule with a ``weight`` of shape ``(m, D)`` (e.g. an ``nn.Linear``, ``"fc"``) that
            maps its input's last dimension ``D`` to the ``m`` logits.
        options: this source's analysis options (default: the callback's).

    Raises:
        ValueError: for an empty module name; at set-up, for a module without an ``(m, D)`` weight.
    """

    def __init__(self, module: str, options: StructureOptions | None = None) -> None:
        if not isinstance(module, str) or not module:
            raise ValueError(f"Expected argument `module` to name the head, a submodule, but got {module!r}.")
        super().__init__(f"head:{module}", options)
        self.module = module

    @property
    def hooked_inputs(self) -> tuple[str, ...]:
        return (self.module,)

    def _weight(self, ctx: SourceContext) -> tuple[Tensor, Tensor | None]:
        assert ctx.module is not None
        layer = find_submodule(ctx.module, self.module, f"sources ({self.name!r})")
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[0] != ctx.num_classes:
            shape = None if not isinstance(weight, Tensor) else tuple(weight.shape)
            raise ValueError(
                f"Expected the head {self.module!r} to have a weight of shape ({ctx.num_classes}, D), one row per "
                f"class, but it has {shape}. Name the final linear layer that outputs the logits."
            )
        bias = getattr(layer, "bias", None)
        return weight, bias if isinstance(bias, Tensor) else None

    def setup(self, ctx: SourceContext) -> None:
        if ctx.scores != "logits":
            raise ValueError(
                f"Source {self.name!r} correlates the logits of a linear head, but the callback has "
                f"scores={ctx.scores!r}: probabilities and ranks are not linear in the features. Drop `head=` (the "
                "dense route, up to 40,000 classes), or pass scores='logits'."
            )
        self._weight(ctx)  # checks the head now, not after the first epoch

    def check(self, inputs: BatchInputs, ctx: SourceContext) -> None:
        features = inputs.feature(f"input:{self.module}", self.name)
        self._check_linear(features, inputs.features.get(f"output:{self.module}"), ctx)

    def update(self, metric: Metric | None, inputs: BatchInputs, ctx: SourceContext) -> Metric | None:
        if metric is None or metric.update_count == 0:  # the first batch since the epoch began
            self.check(inputs, ctx)
        features = inputs.feature(f"input:{self.module}", self.name)
        features = features.reshape(-1, features.shape[-1])
        if metric is None:  # the width is known at the first batch
            metric = HeadSimilarity(int(features.shape[1]), nan_strategy=ctx.nan_strategy).to(features.device)
        metric.update(features if features.is_floating_point() else features.float())
        return metric

    def _check_linear(self, features: Tensor, output: Tensor | None, ctx: SourceContext) -> None:
        """The head's output on the batch (up to 8,192 rows) is ``features @ weight.T + bias``, or the route is wrong.

        Costs one more forward pass of the head, on the first batch of each epoch.
        """
        if output is None or ctx.module is None:
            return
        weight, bias = self._weight(ctx)
        check_finite_head(weight, bias, self.module)
        rows = features.reshape(-1, features.shape[-1])[:8192]
        got = output.reshape(-1, output.shape[-1])[:8192]
        if rows.shape[-1] != weight.shape[1] or got.shape != (rows.shape[0], weight.shape[0]):
            raise ValueError(
                f"Source {self.name!r}: the head {self.module!r} maps inputs of shape {tuple(features.shape)} to "
                f"outputs of shape {tuple(output.shape)}, not the (N, {weight.shape[1]}) -> (N, {weight.shape[0]}) of "
                "its weight. Name the final linear layer."
            )
        with torch.no_grad():
            want = torch.nn.functional.linear(rows.to(weight.dtype), weight, bias)
            scale = float(want.abs().max()) + 1e-6
            if not bool(torch.allclose(got.to(want.dtype), want, rtol=2e-2, atol=2e-2 * scale)):  # bf16 passes
                raise ValueError(
                    f"Source {self.name!r}: the output of {self.module!r} is not `input @ weight.T + bias` (a "
                    "normalised or cosine classifier, a scale, an activation inside the module?), so the head route "
                    "would give another matrix than its logits'. Name a plain linear layer, or drop `head=` for the "
                    "dense route."
                )

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Any:  # ClassEmbeddings
        width = ctx.reduce_max(0 if not isinstance(metric, HeadSimilarity) else metric.num_features)
        if width == 0:
            raise ValueError(f"Source {self.name!r} saw no input of {self.module!r} on any process in this epoch.")
        weight, bias = self._weight(ctx)
        check_finite_head(weight, bias, self.module)
        if not isinstance(metric, HeadSimilarity):
            metric = HeadSimilarity(width, nan_strategy=ctx.nan_strategy).to(weight.device)
        return metric.compute(weight, bias)

    def undefined_classes(self, metric: Metric | None) -> list[int]:
        found = getattr(metric, "constant_classes", None) if isinstance(metric, HeadSimilarity) else None
        return [] if found is None else found.tolist()


class FeaturesSource(Source):
    """Per-class statistics of a submodule's output, compared by cosine similarity (Park et al.).

    ``statistic="mean"``: the mean feature vector of each class; ``"welch"``: the per-channel Welch t statistics of
    each class against all other samples (:class:`~lightning_classim.sources.ClassFeatureSimilarity`). ``(N, C, H,
    W)`` outputs are reduced by global average pooling. Needs the targets. The strings ``"features:<module>"`` and
    ``"welch:<module>"`` name it.

    Args:
        module: the submodule whose forward output is read (e.g. ``"layer4"``).
        statistic: ``"mean"`` or ``"welch"``.
        options: this source's analysis options (default: the callback's).
    """

    needs_target = True

    def __init__(
        self, module: str, statistic: Literal["mean", "welch"] = "mean", options: StructureOptions | None = None
    ) -> None:
        if statistic not in ("mean", "welch"):
            raise ValueError(f"Expected argument `statistic` to be one of ['mean', 'welch'], but got {statistic!r}.")
        if not isinstance(module, str) or not module:
            raise ValueError(f"Expected argument `module` to name a submodule, but got {module!r}.")
        super().__init__(f"{'features' if statistic == 'mean' else 'welch'}:{module}", options)
        self.module = module
        self.statistic: Literal["mean", "welch"] = statistic

    def __repr__(self) -> str:
        options = "" if self.options is None else f", options={self.options!r}"
        return f"FeaturesSource({self.module!r}, statistic={self.statistic!r}{options})"

    @property
    def hooked_modules(self) -> tuple[str, ...]:
        return (self.module,)

    def update(self, metric: Metric | None, inputs: BatchInputs, ctx: SourceContext) -> Metric | None:
        features = inputs.feature(self.module, self.name)
        assert inputs.target is not None
        if metric is None:  # the width is known at the first batch
            metric = ClassFeatureSimilarity(ctx.num_classes, int(features.shape[1]), statistic=self.statistic)
            metric = metric.to(features.device)
        metric.update(features, inputs.target.to(features.device))
        return metric

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Tensor:
        # a process that saw no batch learns the width from the others (every process takes part)
        width = ctx.reduce_max(0 if not isinstance(metric, ClassFeatureSimilarity) else metric.num_features)
        if width == 0:
            raise ValueError(f"Source {self.name!r} saw no features on any process in this epoch.")
        if metric is None:
            device = next(ctx.module.parameters()).device if ctx.module is not None else torch.device("cpu")
            metric = ClassFeatureSimilarity(ctx.num_classes, width, statistic=self.statistic).to(device)
        return metric.compute()

    def undefined_classes(self, metric: Metric | None) -> list[int]:
        return metric.undefined_classes.tolist() if isinstance(metric, ClassFeatureSimilarity) else []


class WeightsSource(Source):
    """The cosine similarity of a layer's weight rows, or class proxies (Kim et al.); needs no data.

    The string ``"weights:<module>"`` names it.

    Args:
        module: the layer whose ``weight`` has one row per class (e.g. the final ``nn.Linear``, ``"fc"``).
        options: this source's analysis options (default: the callback's).
    """

    def __init__(self, module: str, options: StructureOptions | None = None) -> None:
        if not isinstance(module, str) or not module:
            raise ValueError(f"Expected argument `module` to name a submodule, but got {module!r}.")
        super().__init__(f"weights:{module}", options)
        self.module = module

    def setup(self, ctx: SourceContext) -> None:
        assert ctx.module is not None
        layer = find_submodule(ctx.module, self.module, f"sources ({self.name!r})")
        weight_similarity(layer, ctx.num_classes)  # checks the rows now, not after the first epoch

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Tensor:
        assert ctx.module is not None
        return weight_similarity(find_submodule(ctx.module, self.module, "module"), ctx.num_classes)


class ConfusionSource(Source):
    """Symmetrised confusion rates, the paper's baseline (single-label only; needs scores and class-index targets).

    ``(R + R^T) / 2`` for the row-normalised confusion matrix ``R`` (torchmetrics' ``MulticlassConfusionMatrix``).
    The string ``"confusion"`` names it.

    Args:
        options: this source's analysis options (default: the callback's).
    """

    needs_scores = True
    needs_target = True
    colour = "rates"

    def __init__(self, options: StructureOptions | None = None) -> None:
        super().__init__("confusion", options)

    def make_metric(self, ctx: SourceContext) -> Metric:
        from torchmetrics.classification import MulticlassConfusionMatrix

        return MulticlassConfusionMatrix(ctx.num_classes, validate_args=False)

    def update(self, metric: Metric | None, inputs: BatchInputs, ctx: SourceContext) -> Metric | None:
        assert metric is not None and inputs.scores is not None and inputs.target is not None
        if inputs.target.ndim != 1:
            raise ValueError(
                f"Source 'confusion' needs single-label targets (class indices of shape (N,)), but got shape "
                f"{tuple(inputs.target.shape)}. Use 'cooccurrence' for multi-label targets."
            )
        metric.update(inputs.scores.argmax(dim=1), inputs.target.to(inputs.scores.device))
        return metric

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Tensor:
        assert metric is not None
        return confusion_similarity(metric.compute())


class CooccurrenceSource(Source):
    """Label co-occurrence of the targets, normalised by the union (IoU; Srinivasan et al.).

    Multi-hot or class-index targets. Sparse: give it ``StructureOptions(method="average")``, complete linkage ties at
    distance 1 between labels that never co-occur. The string ``"cooccurrence"`` names it.

    Args:
        options: this source's analysis options (default: the callback's).
    """

    needs_target = True
    colour = "rates"

    def __init__(self, options: StructureOptions | None = None) -> None:
        super().__init__("cooccurrence", options)

    def make_metric(self, ctx: SourceContext) -> Metric:
        return LabelCooccurrence(ctx.num_classes)

    def update(self, metric: Metric | None, inputs: BatchInputs, ctx: SourceContext) -> Metric | None:
        assert metric is not None and inputs.target is not None
        metric.update(inputs.target)
        return metric

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Tensor:
        assert metric is not None
        return metric.compute()


class MetricSource(Source):
    """A view of yours: any torchmetrics ``Metric`` whose ``compute()`` returns the ``(m, m)`` similarity matrix.

    Each analysed epoch the callback resets the metric and moves it to the model's device, calls
    ``metric.update(*inputs)`` after each validation step and ``metric.compute()`` on every process at the end
    (torchmetrics synchronises the states across processes).

    Args:
        name: the view's name (letters, digits, ``_``, ``-``, ``.``; not a built-in one): its tag and folder name.
        metric: the metric.
        inputs: what ``metric.update`` receives, in this order: ``"scores"`` (the classifier's scores ``(N, m)``),
            ``"target"`` (the batch's targets at the callback's ``target_key``), ``"features:<module>"`` (that
            submodule's output in the forward pass).
        options: this source's analysis options (default: the callback's).

    Raises:
        ValueError: for a built-in or malformed name, a ``metric`` that is not a torchmetrics ``Metric``, or
            ``inputs`` that are empty or hold an unknown entry.

    Example:
        >>> from lightning_classim import ClassSimilarity
        >>> from lightning_classim.sources import MetricSource
        >>> src = MetricSource("probs", ClassSimilarity(10, scores="probs"))
        >>> src.tag, src.inputs, src.needs_scores, src.needs_target
        ('probs', ('scores',), True, False)
    """

    def __init__(
        self,
        name: str,
        metric: Metric,
        inputs: Sequence[str] = ("scores",),
        options: StructureOptions | None = None,
    ) -> None:
        if not isinstance(name, str) or name.partition(":")[0] in (*_MODULE_KINDS, "scores", "confusion",
                                                                  "cooccurrence") or ":" in name:  # fmt: skip
            raise ValueError(
                f"Expected argument `name` of a MetricSource to be a name of your own (letters, digits, '_', '-', "
                f"'.'; not a built-in view), but got {name!r}. Example: MetricSource('probs', metric)."
            )
        super().__init__(name, options)
        if not isinstance(metric, Metric):
            raise ValueError(
                f"Expected argument `metric` of MetricSource({name!r}) to be a torchmetrics.Metric, but got "
                f"{type(metric).__name__}. Wrap your computation in a Metric whose compute() returns the (m, m) "
                "similarity matrix."
            )
        if isinstance(inputs, str) or not inputs or any(not _is_input(x) for x in inputs):
            raise ValueError(
                f"Expected argument `inputs` of MetricSource({name!r}) to be a non-empty sequence of 'scores', "
                f"'target' and 'features:<module>', but got {inputs!r}."
            )
        self.metric = metric
        self._given = False
        self.inputs = tuple(inputs)
        self.needs_scores = "scores" in self.inputs
        self.needs_target = "target" in self.inputs

    @property
    def hooked_modules(self) -> tuple[str, ...]:
        return tuple(x.partition(":")[2] for x in self.inputs if x.startswith("features:"))

    def make_metric(self, ctx: SourceContext) -> Metric:
        """The metric given, the first time; a fresh copy of it for each further dataloader or stage."""
        if self._given:
            return self.metric.clone()
        self._given = True
        return self.metric

    def update(self, metric: Metric | None, inputs: BatchInputs, ctx: SourceContext) -> Metric | None:
        assert metric is not None
        fed: dict[str, Any] = {"scores": inputs.scores, "target": inputs.target}
        args = [fed[x] if x in fed else inputs.feature(x.partition(":")[2], self.name) for x in self.inputs]
        metric.update(*(arg.to(metric.device) for arg in args))
        return metric

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Tensor:
        assert metric is not None
        matrix = metric.compute()
        m = ctx.num_classes
        if not isinstance(matrix, Tensor) or matrix.shape != (m, m):
            got = f"shape {tuple(matrix.shape)}" if isinstance(matrix, Tensor) else type(matrix).__name__
            raise ValueError(
                f"Expected the metric of MetricSource({self.name!r}), {type(metric).__name__}, to compute a ({m}, {m}) "
                f"similarity tensor, but got {got}. Return the class-by-class matrix from its compute()."
            )
        return matrix


def _is_input(name: object) -> bool:
    return isinstance(name, str) and (name in ("scores", "target") or (name.startswith("features:") and len(name) > 9))


def as_source(spec: str | Source) -> Source:
    """The source a string names, or the source itself.

    The strings: ``"scores"``, ``"confusion"``, ``"cooccurrence"``, ``"features:<module>"``, ``"welch:<module>"``,
    ``"weights:<module>"``, ``"head:<module>"``.

    Raises:
        ValueError: for anything else.

    Example:
        >>> as_source("welch:layer4")
        FeaturesSource('layer4', statistic='welch')
    """
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, str):
        kind, _, module = spec.partition(":")
        if kind == "scores" and not module:
            return ScoresSource()
        if kind == "confusion" and not module:
            return ConfusionSource()
        if kind == "cooccurrence" and not module:
            return CooccurrenceSource()
        if kind in ("features", "welch") and module:
            return FeaturesSource(module, statistic="mean" if kind == "features" else "welch")
        if kind == "weights" and module:
            return WeightsSource(module)
        if kind == "head" and module:
            return HeadSource(module)
    raise ValueError(
        f"Expected a source to be one of {_BUILT_IN}, or a Source object (e.g. MetricSource('name', metric)), but got "
        f"{spec!r}."
    )


def as_sources(sources: Sequence[str | Source]) -> list[Source]:
    """The sources of a list of strings and Source objects, checked to have distinct names and metrics.

    Raises:
        ValueError: for an empty list, an unknown entry, two sources with one name or tag, or one metric object in
            two sources.
    """
    if isinstance(sources, (str, Source)) or not sources:
        raise ValueError(
            f"Expected argument `sources` to be a non-empty list of sources, but got {sources!r}. "
            'Example: sources=["scores", "features:layer4", "weights:fc", "confusion", "cooccurrence"].'
        )
    parsed = [as_source(spec) for spec in sources]
    names = [p.name for p in parsed]
    tags = [p.tag for p in parsed]
    if len(set(names)) != len(names) or len(set(tags)) != len(tags):
        raise ValueError(f"Expected the entries of `sources` to have distinct names, but got {names}.")
    metrics = [id(p.metric) for p in parsed if isinstance(p, MetricSource)]
    if len(set(metrics)) != len(metrics):
        raise ValueError(
            f"Expected every MetricSource in `sources` to have its own metric object, but got one metric in two "
            f"sources ({names}). Create one metric per source."
        )
    return parsed
