"""The interface of a similarity source: what the callback asks of every view of class similarity.

A source makes its metric, updates it from each validation batch, computes its ``(m, m)`` matrix at the end of the
epoch, and says how its values are coloured. The callback does the rest (hooks, capture, reset, device, the
collective compute, the analysis with the source's :class:`~lightning_classim.StructureOptions`, logging). A new kind
of source is one subclass; users can pass their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_classim._streaming import NanStrategy, ScoresType
from lightning_classim.options import StructureOptions

__all__ = ["BatchInputs", "ColourScale", "Source", "SourceContext", "find_submodule"]

ColourScale = Literal["correlation", "rates"]
_NAME = re.compile(r"[A-Za-z0-9_.\-:]+")


@dataclass(frozen=True)
class SourceContext:
    """What a source may need besides its own settings.

    Attributes:
        num_classes: number of classes ``m``.
        scores: what the score correlation correlates (the callback's ``scores``).
        multilabel: whether the classifier is multi-label (the callback's ``multilabel``).
        nan_strategy: what to do with non-finite scores (the callback's ``nan_strategy``).
        module: the LightningModule being validated (``None`` outside a Trainer).
        reduce_max: the largest of an int over all processes (a collective: every process calls it at ``compute``).
    """

    num_classes: int
    scores: ScoresType = "logits"
    multilabel: bool = False
    nan_strategy: NanStrategy = "error"
    module: nn.Module | None = None
    reduce_max: Callable[[int], int] = field(default=lambda value: value)


@dataclass(frozen=True)
class BatchInputs:
    """What the callback captured in one validation step.

    Attributes:
        scores: the classifier's scores ``(N, m)`` (``None`` when no source needs them).
        target: the batch's targets (``None`` when no source needs them).
        features: the forward outputs of the hooked submodules, by name, and their inputs (``"input:<name>"``).
    """

    scores: Tensor | None = None
    target: Tensor | None = None
    features: Mapping[str, Tensor] = field(default_factory=dict)

    def feature(self, module: str, source: str) -> Tensor:
        """The output of ``module`` in this step.

        Raises:
            ValueError: if the module did not run in this step.
        """
        features = self.features.get(module)
        if features is None:
            raise ValueError(
                f"Source {source!r} captured no output of module {module!r} in this validation step. "
                "Name a submodule that runs in the model's forward pass."
            )
        return features


def find_submodule(module: nn.Module, name: str, argument: str) -> nn.Module:
    """``module.get_submodule(name)``, or a ValueError naming ``argument`` and listing the submodules."""
    try:
        return module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in module.named_modules() if n][:20]
        raise ValueError(
            f"Expected argument `{argument}` to name a submodule of {type(module).__name__}, but got {name!r}. "
            f"Submodules: {names}."
        ) from None


class Source:
    """A view of class similarity that :class:`~lightning_classim.ClassSimilarityCallback` computes and analyses.

    Subclass it for a view of your own, or use :class:`~lightning_classim.sources.MetricSource` to wrap any
    torchmetrics ``Metric`` whose ``compute()`` returns the ``(m, m)`` matrix. The callback calls, in this order:
    :meth:`setup` once, :meth:`make_metric` once, then every analysed epoch resets the metric, calls :meth:`update`
    after each validation step and :meth:`compute` on every process at the end, and analyses the matrix with
    :attr:`options` (the callback's when ``None``).

    Args:
        name: the source's name: letters, digits, ``_``, ``-``, ``.`` and ``:``. Its tag and folder name is
            :attr:`tag` (``:``, ``.`` and ``/`` become ``_``).
        options: this source's analysis options, in place of the callback's (all of them; ``None``: the callback's).

    Raises:
        ValueError: for a bad name, or ``options`` that are not a :class:`~lightning_classim.StructureOptions`.
    """

    #: Whether :meth:`update` needs the classifier's scores.
    needs_scores: bool = False
    #: Whether :meth:`update` needs the batch's targets.
    needs_target: bool = False
    #: How the heatmap colours the values: ``"correlation"`` on [-1, 1] with the callback's colormap, ``"rates"`` on
    #: [0, the 99th percentile of the off-diagonal values] with magma (confusion rates, co-occurrence IoU).
    colour: ColourScale = "correlation"

    def __init__(self, name: str, options: StructureOptions | None = None) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"Expected the name of a source to be letters, digits, '_', '-', '.' and ':', but got {name!r}."
            )
        if options is not None and not isinstance(options, StructureOptions):
            raise ValueError(
                f"Expected argument `options` of source {name!r} to be a StructureOptions or None, but got "
                f"{type(options).__name__}. Example: StructureOptions(method='average')."
            )
        self.name = name
        self.options = options

    def __repr__(self) -> str:
        options = "" if self.options is None else f", options={self.options!r}"
        return f"{type(self).__name__}({self.name!r}{options})"

    @property
    def tag(self) -> str:
        """Name in tags and folders: ``features_layer4``."""
        return self.name.replace(":", "_").replace(".", "_").replace("/", "_")

    @property
    def hooked_modules(self) -> tuple[str, ...]:
        """The submodules whose forward output :meth:`update` reads from :attr:`BatchInputs.features`."""
        return ()

    @property
    def hooked_inputs(self) -> tuple[str, ...]:
        """The submodules whose forward *input* (first argument) :meth:`update` reads: ``"input:<module>"``."""
        return ()

    def setup(self, ctx: SourceContext) -> None:
        """Check the source against the model, before the first epoch (``ctx.module`` is set). Default: nothing."""

    def check(self, inputs: BatchInputs, ctx: SourceContext) -> None:
        """Check one step's inputs without accumulating them (the sanity check's probe). Default: nothing."""

    def make_metric(self, ctx: SourceContext) -> Metric | None:
        """A new metric this source streams into (``None`` for none, or one made at the first batch).

        Called once per stage and dataloader (validation, test, several dataloaders): each gets its own metric.
        """
        return None

    def update(self, metric: Metric | None, inputs: BatchInputs, ctx: SourceContext) -> Metric | None:
        """Add one validation step; return the metric (a new one if it was made now). Default: nothing."""
        return metric

    def compute(self, metric: Metric | None, ctx: SourceContext) -> Tensor:
        """The ``(m, m)`` similarity matrix of the epoch (called on every process: a collective)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement `compute`.")

    def undefined_classes(self, metric: Metric | None) -> list[int]:
        """The classes whose similarity was undefined in the last :meth:`compute` (e.g. a constant score)."""
        return []

    def colour_scale(self, values: np.ndarray, cmap: str) -> tuple[float, float, str]:
        """``(vmin, vmax, cmap)`` of the heatmap, given the off-diagonal values (see :attr:`colour`)."""
        if self.colour == "rates":
            top = float(np.quantile(values, 0.99)) if values.size else 1.0
            return 0.0, max(top, 1e-6), "magma"
        return -1.0, 1.0, cmap
