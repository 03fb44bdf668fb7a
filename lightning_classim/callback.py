"""The Lightning callback: per-epoch class-similarity structure in TensorBoard, W&B and on disk."""

from __future__ import annotations

import collections
import concurrent.futures
import re
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from lightning_classim.analysis import (
    DistanceKind,
    LinkageMethod,
    StructureResult,
    _check_choice,
    _check_order,
    _offdiag_pearson,
    adjusted_rand_index,
    analyze,
    check_group_args,
    check_taxonomy,
    notes_not_warned,
)
from lightning_classim.artifacts import write_run_info, write_snapshot
from lightning_classim.functional import NanStrategy, ScoresType, _check_args
from lightning_classim.metric import ClassSimilarity
from lightning_classim.render import render_heatmap
from lightning_classim.sources import ClassFeatureSimilarity, LabelCooccurrence, confusion_similarity, weight_similarity

__all__ = ["ClassSimilarityCallback", "Source"]

_HIST_MAX_VALUES = 1_000_000


@dataclass
class _Panel:
    """One source's pictures and tables of one epoch (``path`` is ``""`` for the primary source)."""

    path: str
    image: np.ndarray | None = None
    markdown: str = ""
    table_columns: list[str] = field(default_factory=list)
    table_rows: list[list[Any]] = field(default_factory=list)
    histogram: np.ndarray | None = None


@dataclass
class _Payload:
    """What one epoch logs: produced on the worker thread, handed to the loggers on the training thread."""

    epoch: int
    step: int
    scalars: dict[str, float]
    panels: list[_Panel] = field(default_factory=list)
    #: (source, number of groups) of the analyses whose automatic choice hit the top of its range
    at_max_groups: list[tuple[str, int]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source, note) of the analyses


SOURCE_KINDS = ("scores", "features", "welch", "weights", "confusion", "cooccurrence")
_NEEDS_MODULE = ("features", "welch", "weights")
_NEEDS_TARGETS = ("features", "welch", "confusion", "cooccurrence")
_BUILT_IN = "'scores', 'confusion', 'cooccurrence', 'features:<module>', 'welch:<module>' or 'weights:<module>'"


@dataclass(frozen=True, eq=False)
class Source:
    """One similarity view of :class:`ClassSimilarityCallback`, with options of its own, or a view of yours.

    A string in ``sources`` is short for ``Source(that_string)``. Give a ``Source`` to analyse one view with options
    of its own (average linkage for a sparse co-occurrence or confusion matrix, where complete linkage ties; its own
    number of groups), or to add a view the package does not have: any :class:`torchmetrics.Metric` whose
    ``compute()`` returns the ``(m, m)`` similarity matrix.

    Args:
        spec: a built-in view (``"scores"``, ``"confusion"``, ``"cooccurrence"``, ``"features:<module>"``,
            ``"welch:<module>"``, ``"weights:<module>"``), or, with ``metric``, the name of your view (letters,
            digits, ``_``, ``-`` and ``.``; its tag and folder name).
        metric: your view's metric (only with a name of your own as ``spec``). At the start of each analysed
            validation epoch the callback resets it and moves it to the model's device; after each validation step
            it calls ``metric.update(*inputs)``; at the end, ``metric.compute()`` on every process (torchmetrics
            synchronises the states across processes), which must return a square ``(m, m)`` tensor.
        inputs: what ``metric.update`` receives, in this order (only with ``metric``; default ``("scores",)``):
            ``"scores"`` (the classifier's scores ``(N, m)``, captured as for the ``"scores"`` view), ``"target"``
            (the batch's targets at the callback's ``target_key``), ``"features:<module>"`` (that submodule's
            output in the forward pass).
        method: this view's linkage method, in place of the callback's ``method`` (see
            :func:`~lightning_classim.analyze`).
        distance: this view's distance, in place of the callback's ``distance``.
        clip_negative: whether to clip this view's negative similarities, in place of the callback's.
        n_groups: this view's number of groups.
        distance_threshold: cut this view's tree at this height instead.
        max_groups: the largest number of groups of this view's automatic choice. When any of ``n_groups``,
            ``distance_threshold`` and ``max_groups`` is given, the three replace the callback's for this view
            (checked against ``num_classes`` by the callback).

    Raises:
        ValueError: for an unknown view, a ``metric`` that is not a torchmetrics ``Metric`` (or one given with a
            built-in view), ``inputs`` without ``metric`` or with an unknown entry, or a bad option.

    Example:
        >>> from lightning_classim import ClassSimilarity, ClassSimilarityCallback, Source
        >>> cb = ClassSimilarityCallback(
        ...     num_classes=10,
        ...     multilabel=True,
        ...     sources=[
        ...         "scores",
        ...         Source("cooccurrence", method="average"),  # sparse: complete linkage would tie at distance 1
        ...         Source("probs", metric=ClassSimilarity(10, scores="probs", multilabel=True)),  # a view of yours
        ...     ],
        ... )
        >>> [(src.spec, src.kind, src.tag) for src in cb.sources]
        [('scores', 'scores', 'scores'), ('cooccurrence', 'cooccurrence', 'cooccurrence'), ('probs', 'custom', 'probs')]
    """

    spec: str
    metric: Metric | None = None
    inputs: Sequence[str] | None = None
    method: LinkageMethod | None = None
    distance: DistanceKind | None = None
    clip_negative: bool | None = None
    n_groups: int | None = None
    distance_threshold: float | None = None
    max_groups: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str):
            raise ValueError(f"Expected argument `spec` of Source to be a string, but got {self.spec!r}.")
        kind, _, module = self.spec.partition(":")
        if self.metric is None:
            if kind not in SOURCE_KINDS or (kind in _NEEDS_MODULE) != bool(module):
                raise ValueError(
                    f"Expected a source to be one of {_BUILT_IN}, or a name of your own with `metric=`, but got "
                    f"{self.spec!r}."
                )
            if self.inputs is not None:
                raise ValueError(
                    f"Argument `inputs` of Source({self.spec!r}) is for a metric of your own (`metric=`), but got "
                    f"inputs={self.inputs!r} for a built-in view. Drop `inputs`."
                )
        else:
            if not isinstance(self.metric, Metric):
                raise ValueError(
                    f"Expected argument `metric` of Source({self.spec!r}) to be a torchmetrics.Metric, but got "
                    f"{type(self.metric).__name__}. Wrap your computation in a Metric whose compute() returns the "
                    "(m, m) similarity matrix."
                )
            if kind in SOURCE_KINDS or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.spec):
                raise ValueError(
                    f"Expected argument `spec` of a Source with `metric=` to be a name of your own (letters, digits, "
                    f"'_', '-', '.'; not a built-in view), but got {self.spec!r}. Example: Source('probs', metric=...)."
                )
            inputs = ("scores",) if self.inputs is None else self.inputs
            if isinstance(inputs, str) or not inputs or any(not _is_input(x) for x in inputs):
                raise ValueError(
                    f"Expected argument `inputs` of Source({self.spec!r}) to be a non-empty sequence of 'scores', "
                    f"'target' and 'features:<module>', but got {self.inputs!r}."
                )
            object.__setattr__(self, "inputs", tuple(inputs))
        if self.method is not None:
            _check_choice("method", self.method, LinkageMethod)
        if self.distance is not None:
            _check_choice("distance", self.distance, DistanceKind)
        if self.clip_negative is not None and not isinstance(self.clip_negative, bool):
            raise ValueError(
                f"Expected argument `clip_negative` of Source({self.spec!r}) to be a bool or None, but got "
                f"{self.clip_negative!r}."
            )

    @property
    def kind(self) -> str:
        """``"custom"`` for a view with ``metric``, else the part of ``spec`` before ``:``."""
        return "custom" if self.metric is not None else self.spec.partition(":")[0]

    @property
    def module(self) -> str | None:
        """The submodule of a built-in ``features``, ``welch`` or ``weights`` view."""
        return None if self.metric is not None else self.spec.partition(":")[2] or None

    @property
    def tag(self) -> str:
        """Name in tags and folders: ``features_layer4``."""
        return self.spec.replace(":", "_").replace(".", "_").replace("/", "_")

    @property
    def needs_scores(self) -> bool:
        """Whether the view is fed the classifier's scores."""
        return self.kind in ("scores", "confusion") or "scores" in self._inputs

    @property
    def needs_target(self) -> bool:
        """Whether the view is fed the batch's targets."""
        return self.kind in _NEEDS_TARGETS or "target" in self._inputs

    @property
    def hooked_modules(self) -> list[str]:
        """The submodules whose forward output the view is fed."""
        if self.kind in ("features", "welch"):
            return [str(self.module)]
        return [x.partition(":")[2] for x in self._inputs if x.startswith("features:")]

    @property
    def options(self) -> dict[str, Any]:
        """The analysis options this view sets in place of the callback's (see :func:`~lightning_classim.analyze`)."""
        tree: dict[str, Any] = {"method": self.method, "distance": self.distance, "clip_negative": self.clip_negative}
        options = {k: v for k, v in tree.items() if v is not None}
        grouping: dict[str, Any] = {"n_groups": self.n_groups, "distance_threshold": self.distance_threshold}
        if any(v is not None for v in (*grouping.values(), self.max_groups)):
            options.update(grouping, max_groups=self.max_groups)  # the three together replace the callback's
        return options

    @property
    def _inputs(self) -> tuple[str, ...]:
        return tuple(self.inputs or ())


def _is_input(name: object) -> bool:
    return isinstance(name, str) and (name in ("scores", "target") or (name.startswith("features:") and len(name) > 9))


def _parse_sources(sources: Sequence[str | Source]) -> list[Source]:
    if isinstance(sources, (str, Source)) or not sources:
        raise ValueError(
            f"Expected argument `sources` to be a non-empty list of sources, but got {sources!r}. "
            'Example: sources=["scores", "features:layer4", "weights:fc", "confusion", "cooccurrence"].'
        )
    parsed = []
    for spec in sources:
        if isinstance(spec, Source):
            parsed.append(spec)
        elif isinstance(spec, str):
            parsed.append(Source(spec))
        else:
            raise ValueError(
                f"Expected every entry of `sources` to be one of {_BUILT_IN}, or a Source, but got {spec!r}."
            )
    specs = [p.spec for p in parsed]
    tags = [p.tag for p in parsed]
    if len(set(specs)) != len(specs) or len(set(tags)) != len(tags):
        raise ValueError(f"Expected the entries of `sources` to have distinct names, but got {specs}.")
    metrics = [id(p.metric) for p in parsed if p.metric is not None]
    if len(set(metrics)) != len(metrics):
        raise ValueError(
            f"Expected every Source in `sources` to have its own metric object, but got one metric in two sources "
            f"({specs}). Create one metric per Source."
        )
    return parsed


class ClassSimilarityCallback(Callback):
    """Log the class-similarity structure of a classifier every validation epoch.

    Captures the scores of every validation batch with no change to the model, streams them into a
    :class:`~lightning_classim.ClassSimilarity` metric on the model's device, and at the end of each validated epoch
    computes the matrix on every process, then, on rank 0, orders it (:func:`~lightning_classim.analyze`), renders
    it and logs: the heatmap, the group summary, a histogram of the similarity values and the structure scalars
    (``n_groups``, ``cophenetic_corr``, ``within_minus_between``, ``drift`` and ``group_ari`` against the previous
    epoch, ...) to every logger in ``trainer.loggers``, and the full file set to ``save_dir``.

    Args:
        num_classes: number of classes ``m``.
        class_names: names of the classes (for summaries and labelled files).
        scores: ``"logits"``, ``"probs"`` or ``"ranks"`` (see :class:`~lightning_classim.ClassSimilarity`).
        multilabel: the classifier is multi-label (sigmoid for ``scores="probs"``).
        every_n_epochs: analyse every n-th validation epoch during ``fit`` (``trainer.validate`` always does).
        output_key: key of the scores in a dict returned by ``validation_step``.
        module: name of a submodule (e.g. ``"fc"`` or ``"head.linear"``) whose forward output holds the scores;
            then ``validation_step`` may return anything.
        method: linkage method (see :func:`~lightning_classim.analyze`).
        distance: ``"correlation"`` or ``"rows"``.
        clip_negative: set negative similarities to 0 before clustering.
        n_groups: a fixed number of groups (default: automatic, best silhouette).
        distance_threshold: cut the tree at this height instead.
        max_groups: largest number of groups of the automatic choice (default ``max(30, ceil(sqrt(num_classes)))``).
        taxonomy: a known class structure (a label per class, a list of levels, or a nested dict of class names):
            adds ``taxonomy_ari`` and ``taxonomy_tree_corr``.
        nan_strategy: ``"error"`` or ``"skip"`` rows with non-finite scores.
        save_dir: folder of the per-epoch files (default: ``<trainer.log_dir>/<tag_prefix>``).
        tag_prefix: prefix of every logged tag, and the name of the default ``save_dir`` sub-folder.
        max_pixels: largest side of the heatmap image (larger matrices are block-averaged).
        cmap: matplotlib colormap of the heatmap.
        async_analysis: analyse, render and write on a worker thread so training goes on meanwhile (the loggers
            are called from the training thread, at its next step or at the end of fit).
        sources: the similarity views to compute, the first one being the *primary* (its order is used for every
            picture, and the others are compared with it): ``"scores"`` (the paper's score correlation),
            ``"features:<module>"`` (cosine of per-class mean features of that submodule's output),
            ``"welch:<module>"`` (cosine of per-class Welch t statistics of those features), ``"weights:<module>"``
            (cosine of that layer's weight rows; no data needed), ``"confusion"`` (symmetrised confusion rates,
            single-label) and ``"cooccurrence"`` (label co-occurrence IoU of the targets); or :class:`Source` objects,
            for a view with options of its own (``Source("cooccurrence", method="average")``) or a view of yours
            (``Source("name", metric=..., inputs=("scores", "target"))``).
        target_key: where the targets are in a validation batch (for the sources that need them): an index into a
            tuple/list batch (default 1: ``(x, y)``) or a key of a dict batch.
        reference: draw the logged heatmaps in a fixed class order, to compare runs image by image: a previous
            run's folder (its last epoch's order and groups) or an order array. The analysis still computes this
            run's own order and groups (saved to disk as usual); only the pictures use the reference.

    Raises:
        ValueError: for bad arguments (at construction); for a bad environment (at ``setup``).

    Example:
        >>> from lightning_classim import ClassSimilarityCallback
        >>> cb = ClassSimilarityCallback(num_classes=10, class_names=[f"c{i}" for i in range(10)])
        >>> cb.state_key
        "ClassSimilarityCallback{'tag_prefix': 'classim', 'scores': 'logits'}"
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        scores: ScoresType = "logits",
        multilabel: bool = False,
        every_n_epochs: int = 1,
        output_key: str = "logits",
        module: str | None = None,
        method: LinkageMethod = "complete",
        distance: DistanceKind = "correlation",
        clip_negative: bool = False,
        n_groups: int | None = None,
        distance_threshold: float | None = None,
        max_groups: int | None = None,
        taxonomy: Any = None,
        nan_strategy: NanStrategy = "error",
        save_dir: str | Path | None = None,
        tag_prefix: str = "classim",
        max_pixels: int = 1024,
        cmap: str = "RdBu_r",
        async_analysis: bool = True,
        reference: str | Path | Sequence[int] | None = None,
        sources: Sequence[str | Source] = ("scores",),
        target_key: int | str = 1,
    ) -> None:
        super().__init__()
        _check_args(num_classes, scores, nan_strategy, "zero")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"Expected argument `class_names` to name all {num_classes} classes, but got {len(class_names)} names."
            )
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"Expected argument `every_n_epochs` to be a positive int, but got {every_n_epochs!r}.")
        if not isinstance(tag_prefix, str) or not tag_prefix or tag_prefix.strip("/") != tag_prefix:
            raise ValueError(
                f"Expected argument `tag_prefix` to be a non-empty name without leading or trailing '/', but got "
                f"{tag_prefix!r}."
            )
        # fail here, at construction, not after the first validation epoch
        _check_choice("method", method, LinkageMethod)
        _check_choice("distance", distance, DistanceKind)
        check_group_args(n_groups, distance_threshold, max_groups, num_classes)
        render_heatmap(np.eye(2), max_pixels=max_pixels, cmap=cmap)  # checks max_pixels and cmap
        if taxonomy is not None:
            check_taxonomy(taxonomy, num_classes, class_names)
        self.sources = _parse_sources(sources)
        for src in self.sources:
            try:
                check_group_args(src.n_groups, src.distance_threshold, src.max_groups, num_classes)
            except ValueError as err:
                raise ValueError(f"Source({src.spec!r}): {err}") from None
        self.target_key = target_key
        self.num_classes = num_classes
        self.class_names = [str(n) for n in class_names] if class_names is not None else None
        self.scores: ScoresType = scores
        self.multilabel = multilabel
        self.every_n_epochs = every_n_epochs
        self.output_key = output_key
        self.module = module
        self.analysis_kwargs: dict[str, Any] = {
            "method": method,
            "distance": distance,
            "clip_negative": clip_negative,
            "n_groups": n_groups,
            "distance_threshold": distance_threshold,
            "max_groups": max_groups,
            "taxonomy": taxonomy,
        }
        self.nan_strategy: NanStrategy = nan_strategy
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.tag_prefix = tag_prefix
        self.max_pixels = max_pixels
        self.cmap = cmap
        self.async_analysis = async_analysis
        self.reference = reference
        self._ref_order: np.ndarray | None = None
        self._ref_groups: np.ndarray | None = None
        if reference is not None and not isinstance(reference, (str, Path)):
            self._ref_order = _check_order(reference, num_classes, "reference")

        self.metric = ClassSimilarity(num_classes, scores=scores, multilabel=multilabel, nan_strategy=nan_strategy)
        self._needs_scores = any(src.needs_scores for src in self.sources)
        self._needs_targets = any(src.needs_target for src in self.sources)
        self._source_metrics: dict[str, Any] = {}
        for src in self.sources:
            if src.kind == "custom":
                self._source_metrics[src.spec] = src.metric
            elif src.kind == "confusion":
                from torchmetrics.classification import MulticlassConfusionMatrix

                self._source_metrics[src.spec] = MulticlassConfusionMatrix(num_classes, validate_args=False)
            elif src.kind == "cooccurrence":
                self._source_metrics[src.spec] = LabelCooccurrence(num_classes)
            elif src.kind in ("features", "welch"):
                self._source_metrics[src.spec] = None  # created at the first batch, when the width is known
        self._source_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._captured: dict[str, Tensor] = {}
        self._last_scores: Tensor | None = None
        self._previous_sources: dict[str, StructureResult] = {}
        self._active = False
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: collections.deque[concurrent.futures.Future[_Payload]] = collections.deque()
        self._lock = threading.Lock()
        self._previous: StructureResult | None = None
        self._history: list[dict[str, float]] = []
        self._warned_loggers: set[str] = set()
        self._warned_max_groups: set[str] = set()
        self._warned_notes: set[str] = set()
        #: Seconds the training thread spent at each analysed epoch end (compute + hand-over; the analysis itself
        #: runs on the worker thread when ``async_analysis``).
        self.epoch_end_wait_s: list[float] = []
        #: Seconds the analysis, rendering and writing of each epoch took (on whichever thread ran them).
        self.analysis_s: list[float] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(tag_prefix=self.tag_prefix, scores=self.scores)

    # ------------------------------------------------------------------------------------------ set-up

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.save_dir is None and not trainer.loggers:
            raise ValueError(
                "ClassSimilarityCallback has nowhere to write: the Trainer has no logger and `save_dir` is None. "
                "Pass `save_dir=...` to the callback, or a logger to the Trainer."
            )
        log_dir = trainer.log_dir  # collective under DDP: every rank asks
        if self.save_dir is None:
            self.save_dir = Path(log_dir or trainer.default_root_dir) / self.tag_prefix
        if isinstance(self.reference, (str, Path)) and self._ref_order is None:
            from lightning_classim.runs import RunError, load_run

            try:
                ref = load_run(self.reference).snapshots[-1]
            except RunError as err:
                raise ValueError(f"Expected argument `reference` to be a readable run folder, but: {err}") from None
            if ref.similarity.shape[0] != self.num_classes:
                raise ValueError(
                    f"Expected argument `reference` to be a run over {self.num_classes} classes, but "
                    f"{self.reference} has {ref.similarity.shape[0]}."
                )
            self._ref_order, self._ref_groups = ref.order.astype(np.intp), ref.groups
        if self.module is not None and self._hook is None:
            target = self._submodule(pl_module, self.module, "module")
            self._hook = target.register_forward_hook(self._capture_hook)
        if not self._source_hooks:
            hooked: set[str] = set()
            for src in self.sources:
                if src.kind == "weights":
                    assert src.module is not None
                    layer = self._submodule(pl_module, src.module, f"sources ({src.spec!r})")
                    weight_similarity(layer, self.num_classes)  # checks the rows now, not after the first epoch
                for name in src.hooked_modules:  # one hook per submodule, shared by the views it feeds
                    layer = self._submodule(pl_module, name, f"sources ({src.spec!r})")
                    if name not in hooked:
                        hooked.add(name)
                        self._source_hooks.append(layer.register_forward_hook(self._feature_hook(name)))
        if trainer.is_global_zero:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            write_run_info(
                self.save_dir,
                {
                    "num_classes": self.num_classes,
                    "class_names": self._names(),
                    "scores": self.scores,
                    "multilabel": self.multilabel,
                    "tag_prefix": self.tag_prefix,
                    "analysis": {k: v for k, v in self._analysis_kwargs(self.sources[0]).items() if k != "taxonomy"},
                    "reference": str(self.reference) if isinstance(self.reference, (str, Path)) else None,
                    "sources": [src.spec for src in self.sources],
                    "source": self.sources[0].spec,
                },
            )
            for src in self.sources[1:]:
                write_run_info(
                    self.save_dir / "sources" / src.tag,
                    {
                        "num_classes": self.num_classes,
                        "class_names": self._names(),
                        "source": src.spec,
                        "primary": self.sources[0].spec,
                        "analysis": {k: v for k, v in self._analysis_kwargs(src).items() if k != "taxonomy"},
                    },
                )

    def _analysis_kwargs(self, src: Source) -> dict[str, Any]:
        """The options of this source's analysis: the callback's, with those the source sets itself."""
        return {**self.analysis_kwargs, **src.options}

    def _names(self) -> list[str]:
        """The class names, or the class indices as strings."""
        return self.class_names or [str(i) for i in range(self.num_classes)]

    @staticmethod
    def _submodule(pl_module: pl.LightningModule, name: str, argument: str) -> torch.nn.Module:
        try:
            return pl_module.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in pl_module.named_modules() if n][:20]
            raise ValueError(
                f"Expected argument `{argument}` to name a submodule of {type(pl_module).__name__}, but got "
                f"{name!r}. Submodules: {names}."
            ) from None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._finish(trainer)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for handle in self._source_hooks:
            handle.remove()
        self._source_hooks = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------------------------------ capture

    def _should_run(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return True

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drain(trainer)
        self._active = self._should_run(trainer)
        if self._active:
            self.metric.reset()
            self.metric.to(pl_module.device)
            for metric in self._source_metrics.values():
                if metric is not None:
                    metric.reset()
                    metric.to(pl_module.device)

    def _capture_hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not self._active:
            return
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, dict):
            out = out.get(self.output_key)
        if not isinstance(out, Tensor):
            raise ValueError(
                f"ClassSimilarityCallback(module={self.module!r}) expected the module's output to be a tensor of "
                f"scores (N, {self.num_classes}), but got {type(output).__name__}. Name the module that outputs the "
                "logits (e.g. the final linear layer)."
            )
        self._last_scores = (out.flatten(0, -2) if out.ndim > 2 else out).detach()

    def _feature_hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if self._active:
                out = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(out, Tensor):
                    self._captured[name] = out.detach()

        return hook

    def _update(self, scores: Tensor) -> None:
        if scores.ndim == 2 and scores.shape[1] != self.num_classes:
            raise ValueError(
                f"ClassSimilarityCallback(num_classes={self.num_classes}) got scores of shape {tuple(scores.shape)}. "
                "Set `num_classes` to the classifier's output width, or capture the right output with "
                "`output_key=` or `module=`."
            )
        self.metric.update(scores.detach())

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active:
            return
        scores = self._scores_of(outputs) if self._needs_scores else None
        if scores is not None and "scores" in {src.kind for src in self.sources}:
            self._update(scores)
        target = self._targets_of(batch) if self._needs_targets else None
        try:
            self._update_sources(scores, target)
        finally:
            self._captured.clear()

    def _features_of(self, src: Source, name: str) -> Tensor:
        features = self._captured.get(name)
        if features is None:
            raise ValueError(
                f"Source {src.spec!r} captured no output of module {name!r} in this validation step. "
                "Name a submodule that runs in the model's forward pass."
            )
        return features

    def _update_sources(self, scores: Tensor | None, target: Tensor | None) -> None:
        """Feed this batch to every source other than ``scores`` (which ``_update`` feeds)."""
        for src in self.sources:
            metric: Any = self._source_metrics.get(src.spec)
            if src.kind == "custom":
                fed = {"scores": scores, "target": target}
                args = [fed.get(name) if name in fed else self._features_of(src, name[9:]) for name in src._inputs]
                metric.update(*(arg.to(metric.device) for arg in args if arg is not None))
                continue
            if target is None:
                continue
            if src.kind == "confusion":
                if target.ndim != 1:
                    raise ValueError(
                        f"Source 'confusion' needs single-label targets (class indices of shape (N,)), but got shape "
                        f"{tuple(target.shape)}. Use 'cooccurrence' for multi-label targets."
                    )
                assert scores is not None
                metric.update(scores.argmax(dim=1), target.to(scores.device))
            elif src.kind == "cooccurrence":
                metric.update(target)
            elif src.kind in ("features", "welch"):
                features = self._features_of(src, str(src.module))
                if metric is None:
                    metric = ClassFeatureSimilarity(
                        self.num_classes, int(features.shape[1]), statistic="welch" if src.kind == "welch" else "mean"
                    ).to(features.device)
                    self._source_metrics[src.spec] = metric
                metric.update(features, target.to(features.device))

    def _scores_of(self, outputs: Any) -> Tensor:
        if self.module is not None:
            scores, self._last_scores = self._last_scores, None
            if scores is None:
                raise ValueError(
                    f"ClassSimilarityCallback(module={self.module!r}) captured no output in this validation step. "
                    "Name a submodule that runs in the model's forward pass."
                )
            return scores
        scores = outputs.get(self.output_key) if isinstance(outputs, dict) else outputs
        if not isinstance(scores, Tensor) or scores.ndim != 2:
            got = (
                f"a dict with keys {sorted(outputs)}"
                if isinstance(outputs, dict)
                else f"a tensor of shape {tuple(outputs.shape)}"
                if isinstance(outputs, Tensor)
                else type(outputs).__name__
            )
            raise ValueError(
                f"ClassSimilarityCallback found no scores: `validation_step` returned {got}. Return the scores "
                f"(a tensor of shape (N, {self.num_classes})) or a dict holding them under "
                f"'{self.output_key}' (see `output_key=`), or pass `module=` naming the submodule that outputs them "
                "(e.g. module='fc')."
            )
        return scores

    def _targets_of(self, batch: Any) -> Tensor:
        key = self.target_key
        try:
            target = batch[key]
        except (KeyError, IndexError, TypeError):
            needing = [src.spec for src in self.sources if src.needs_target]
            shape = f"a dict with keys {sorted(batch)}" if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(
                f"Sources {needing} need the targets, but the validation batch ({shape}) has nothing at "
                f"target_key={key!r}. Set `target_key=` to the targets' index or key in the batch."
            ) from None
        if not isinstance(target, Tensor):
            raise ValueError(
                f"Expected the targets at target_key={key!r} of the batch to be a tensor, but got "
                f"{type(target).__name__}. Set `target_key=` to the targets' index or key in the batch."
            )
        return target

    # ------------------------------------------------------------------------------------------ epoch end

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        start = time.perf_counter()
        matrices = self._compute_sources(trainer, pl_module)  # collective: every rank takes part in each sync
        if not trainer.is_global_zero:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        constant = self.metric.constant_classes.tolist() if "scores" in matrices else []
        if self.async_analysis:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="classim")
            self._pending.append(self._executor.submit(self._analyse, matrices, epoch, step, constant))
        else:
            future: concurrent.futures.Future[_Payload] = concurrent.futures.Future()
            try:
                future.set_result(self._analyse(matrices, epoch, step, constant))
            except Exception as err:  # reported by _drain like a worker error
                future.set_exception(err)
            self._pending.append(future)
            self._drain(trainer)
        self.epoch_end_wait_s.append(time.perf_counter() - start)

    def _compute_sources(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, np.ndarray]:
        """Every source's (m, m) matrix, in the order of ``sources`` (the same order on every rank)."""
        out: dict[str, np.ndarray] = {}
        for src in self.sources:
            metric: Any = self._source_metrics.get(src.spec)
            if src.kind == "scores":
                matrix = self.metric.compute()
            elif src.kind == "confusion":
                matrix = confusion_similarity(metric.compute())
            elif src.kind == "cooccurrence":
                matrix = metric.compute()
            elif src.kind == "custom":
                matrix = metric.compute()
                if not isinstance(matrix, Tensor) or matrix.shape != (self.num_classes, self.num_classes):
                    got = f"shape {tuple(matrix.shape)}" if isinstance(matrix, Tensor) else type(matrix).__name__
                    raise ValueError(
                        f"Expected the metric of Source({src.spec!r}), {type(metric).__name__}, to compute a "
                        f"({self.num_classes}, {self.num_classes}) similarity tensor, but got {got}. Return the "
                        "class-by-class matrix from its compute()."
                    )
            elif src.kind == "weights":
                assert src.module is not None
                matrix = weight_similarity(pl_module.get_submodule(src.module), self.num_classes)
            else:  # features, welch: a rank that saw no batch learns the width from the others
                width = 0 if metric is None else metric.num_features
                width = int(trainer.strategy.reduce(torch.tensor(width, device=pl_module.device), reduce_op="max"))
                if width == 0:
                    raise ValueError(f"Source {src.spec!r} saw no features on any process in this epoch.")
                if metric is None:
                    metric = ClassFeatureSimilarity(
                        self.num_classes, width, statistic="welch" if src.kind == "welch" else "mean"
                    ).to(pl_module.device)
                    self._source_metrics[src.spec] = metric
                matrix = metric.compute()
            out[src.spec] = matrix.detach().cpu().float().numpy()
        return out

    def _analyse(self, matrices: dict[str, np.ndarray], epoch: int, step: int, constant: list[int]) -> _Payload:
        """Analyse, render and write one epoch, every source (worker thread). Returns what the loggers get."""
        start = time.perf_counter()
        assert self.save_dir is not None
        primary = self.sources[0]
        scalars: dict[str, float] = {}
        panels: list[_Panel] = []
        results: dict[str, StructureResult] = {}
        notes: list[tuple[str, str]] = []
        order: np.ndarray | None = None
        groups: np.ndarray | None = None
        for src in self.sources:
            with self._lock:
                previous = self._previous if src is primary else self._previous_sources.get(src.spec)
            with notes_not_warned():  # the notes are warned once per source, on the training thread (`_drain`)
                result = analyze(
                    matrices[src.spec], class_names=self.class_names, previous=previous, **self._analysis_kwargs(src)
                )
            notes.extend((src.spec, note) for note in result.notes)
            results[src.spec] = result
            if src is primary:
                if self._ref_order is not None:  # the reference's order (and groups, when it came from a run folder)
                    order, groups = self._ref_order, self._ref_groups
                else:
                    order, groups = result.order, result.groups
            # pictures in the primary order; correlations on [-1, 1], rates and IoU on [0, their 99th percentile]
            values = _offdiag_sample(result.similarity)  # for the histogram, and the colour scale of rates / IoU
            vmin, vmax, cmap = -1.0, 1.0, self.cmap
            if src.kind in ("confusion", "cooccurrence"):
                vmin, vmax, cmap = 0.0, _upper_quantile(values), "magma"
            image = render_heatmap(
                result.similarity, order, groups, max_pixels=self.max_pixels, cmap=cmap, vmin=vmin, vmax=vmax
            )
            extra: dict[str, Any] = {"source": src.spec}
            if src is primary:
                extra["constant_classes"] = constant
            folder = self.save_dir if src is primary else self.save_dir / "sources" / src.tag
            write_snapshot(folder, epoch, step, result, image, extra=extra)
            with self._lock:
                if src is primary:
                    self._previous = result
                else:
                    self._previous_sources[src.spec] = result
            prefix = "" if src is primary else f"{src.tag}/"
            for key, value in result.metrics.items():
                if np.isfinite(value):
                    scalars[prefix + key] = float(value)
            if src is not primary:
                base = results[primary.spec]
                scalars[f"agreement/{src.tag}/matrix_corr"] = _offdiag_pearson(
                    base.similarity.astype(np.float64), result.similarity.astype(np.float64)
                )
                scalars[f"agreement/{src.tag}/group_ari"] = adjusted_rand_index(base.groups, result.groups)
            panels.append(self._panel("" if src is primary else src.tag, result, image, values))
        scalars["constant_classes"] = float(len(constant))
        if self.analysis_kwargs.get("taxonomy") is not None and len(self.sources) > 1:
            fits = {src.spec: results[src.spec].metrics.get("taxonomy_tree_corr", float("nan")) for src in self.sources}
            best = max(fits, key=lambda k: -np.inf if not np.isfinite(fits[k]) else fits[k])
            lines = ["| source | taxonomy tree corr | taxonomy ARI |", "| --- | ---: | ---: |"]
            for src in self.sources:
                m = results[src.spec].metrics
                lines.append(f"| {src.spec} | {m.get('taxonomy_tree_corr', float('nan')):.3f} | "
                             f"{m.get('taxonomy_ari', float('nan')):.3f} |")  # fmt: skip
            panels[0].markdown += f"\n\nSource closest to the taxonomy: **{best}**\n\n" + "\n".join(lines)
        self.analysis_s.append(time.perf_counter() - start)
        at_max = [(spec, max(r.silhouettes)) for spec, r in results.items() if r.choice_at_max_groups]
        return _Payload(epoch=epoch, step=step, scalars=scalars, panels=panels, at_max_groups=at_max, notes=notes)

    @staticmethod
    def _panel(path: str, result: StructureResult, image: np.ndarray, values: np.ndarray) -> _Panel:
        rows = [
            [
                g.group,
                g.size,
                _none_if_nan(g.cohesion),
                _none_if_nan(g.separation),
                g.nearest,
                ", ".join(g.names[:50]) + (f", ... (+{g.size - 50})" if g.size > 50 else ""),
            ]
            for g in result.summary
        ]
        return _Panel(
            path=path,
            image=image,
            markdown=result.summary_markdown(),
            table_columns=["group", "size", "cohesion", "separation", "nearest", "members"],
            table_rows=rows,
            histogram=values,
        )

    # ------------------------------------------------------------------------------------------ logging

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending and self._pending[0].done():
            self._drain(trainer)

    def _drain(self, trainer: pl.Trainer, wait: bool = False) -> None:
        """Hand finished epochs to the loggers (training thread); report worker errors as warnings."""
        while self._pending and (wait or self._pending[0].done()):
            future = self._pending.popleft()
            try:
                payload = future.result()
            except Exception as err:
                rank_zero_warn(
                    f"ClassSimilarityCallback: the analysis of an epoch failed and was skipped: "
                    f"{type(err).__name__}: {err}",
                    category=UserWarning,
                )
                continue
            self._history.append({"epoch": payload.epoch, "step": payload.step, **payload.scalars})
            for spec, k in payload.at_max_groups:
                if spec not in self._warned_max_groups:  # once per source and fit
                    self._warned_max_groups.add(spec)
                    primary = spec == self.sources[0].spec
                    which = "" if primary else f", source {spec!r}:"
                    alone = "" if primary else f" (or `Source({spec!r}, max_groups=...)` for this source alone)"
                    rank_zero_warn(
                        f"ClassSimilarityCallback: at epoch {payload.epoch}{which} the automatic choice picked {k} "
                        f"groups, the most it tried; the classes may form more groups. Pass `max_groups` larger than "
                        f"{k}{alone} to let it choose more.",
                        category=UserWarning,
                    )
            for spec, note in payload.notes:
                if spec not in self._warned_notes:  # once per source and fit: the same tie tends to recur every epoch
                    self._warned_notes.add(spec)
                    rank_zero_warn(
                        f"ClassSimilarityCallback: at epoch {payload.epoch}, source {spec!r}: {note} To change the "
                        f"options of this source alone, pass `Source({spec!r}, method=...)` in `sources`. (Said once "
                        "per source; every epoch's notes are in its summary.json and group table.)",
                        category=UserWarning,
                    )
            for logger in trainer.loggers:
                self._log(logger, payload)

    def _log(self, logger: Logger, payload: _Payload) -> None:
        prefix = self.tag_prefix
        scalars = {f"{prefix}/{k}": v for k, v in payload.scalars.items()}

        def tag(panel: _Panel, name: str) -> str:
            return f"{prefix}/{panel.path}/{name}" if panel.path else f"{prefix}/{name}"

        try:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                for panel in payload.panels:
                    if panel.image is not None:
                        writer.add_image(tag(panel, "heatmap"), panel.image, payload.step, dataformats="HWC")
                    writer.add_text(tag(panel, "groups"), panel.markdown, payload.step)
                    if panel.histogram is not None and panel.histogram.size:
                        writer.add_histogram(tag(panel, "similarity"), panel.histogram, payload.step)
                logger.log_metrics(scalars, payload.step)
                writer.flush()
            elif isinstance(logger, WandbLogger):
                import wandb

                run = logger.experiment
                data: dict[str, Any] = dict(scalars)
                for panel in payload.panels:
                    if panel.image is not None:
                        data[tag(panel, "heatmap")] = wandb.Image(panel.image, caption=f"epoch {payload.epoch}")
                    data[tag(panel, "groups")] = wandb.Table(
                        columns=list(panel.table_columns),  # type: ignore[arg-type]
                        data=list(panel.table_rows),  # type: ignore[arg-type]
                    )
                    if panel.histogram is not None and panel.histogram.size:
                        data[tag(panel, "similarity")] = wandb.Histogram(panel.histogram.tolist())
                data["trainer/global_step"] = payload.step
                run.log(data)
                for key, value in scalars.items():
                    run.summary[key] = value
            else:
                logger.log_metrics(scalars, payload.step)
                name = type(logger).__name__
                if name not in self._warned_loggers:
                    self._warned_loggers.add(name)
                    rank_zero_warn(
                        f"ClassSimilarityCallback logs only the scalars to {name}; the heatmaps and group summaries "
                        f"are written to {self.save_dir}.",
                        category=UserWarning,
                    )
        except Exception as err:  # a failing logger must not stop training; the files are already on disk
            rank_zero_warn(
                f"ClassSimilarityCallback: logging epoch {payload.epoch} to {type(logger).__name__} failed "
                f"({type(err).__name__}: {err}); the epoch's files are in {self.save_dir}.",
                category=UserWarning,
            )

    def _finish(self, trainer: pl.Trainer) -> None:
        self._drain(trainer, wait=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":
            self._finish(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            self._finish(trainer)

    # ------------------------------------------------------------------------------------------ results

    @property
    def history(self) -> list[dict[str, float]]:
        """The structure scalars of every analysed epoch that reached the loggers, oldest first."""
        return list(self._history)

    @property
    def last_result(self) -> StructureResult | None:
        """The most recent analysis (waits for nothing: may lag behind while the worker runs)."""
        with self._lock:
            return self._previous

    # ------------------------------------------------------------------------------------------ checkpoints

    @override
    def state_dict(self) -> dict[str, Any]:
        for future in list(self._pending):
            concurrent.futures.wait([future])
        with self._lock:
            prev = self._previous
            others = dict(self._previous_sources)
        if prev is None:
            return {"version": 1}
        return {"version": 1, "num_classes": self.num_classes, **_result_state(prev),
                "sources": {spec: _result_state(r) for spec, r in others.items()}}  # fmt: skip

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("similarity") is None or state_dict.get("num_classes", self.num_classes) != self.num_classes:
            return
        names = tuple(self._names())
        with self._lock:
            self._previous = _result_from_state(state_dict, names)
            self._previous_sources = {
                spec: _result_from_state(state, names) for spec, state in state_dict.get("sources", {}).items()
            }


def _result_state(result: StructureResult) -> dict[str, Tensor]:
    """What a later epoch needs of an earlier analysis (drift, group ARI, orientation)."""
    return {
        "similarity": torch.from_numpy(result.similarity.copy()),
        "order": torch.from_numpy(result.order.astype(np.int64)),
        "groups": torch.from_numpy(result.groups.astype(np.int64)),
    }


def _result_from_state(state: dict[str, Any], names: tuple[str, ...]) -> StructureResult:
    return StructureResult(
        similarity=state["similarity"].numpy().astype(np.float32),
        order=state["order"].numpy().astype(np.intp),
        linkage=np.zeros((0, 4)),
        groups=state["groups"].numpy().astype(np.intp),
        summary=(),
        metrics={},
        class_names=names,
    )


def _upper_quantile(values: np.ndarray, q: float = 0.99) -> float:
    """The q-quantile of off-diagonal values (the top of the colour scale for rates and IoU), at least 1e-6."""
    return max(float(np.quantile(values, q)) if values.size else 1.0, 1e-6)


def _none_if_nan(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _offdiag_sample(sim: np.ndarray) -> np.ndarray:
    """Off-diagonal values (upper triangle), evenly thinned to at most a million for the histogram."""
    m = sim.shape[0]
    rows, cols = np.triu_indices(m, 1) if m <= 1500 else _thinned_pairs(m)
    return sim[rows, cols].astype(np.float32)


def _thinned_pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
    n_pairs = m * (m - 1) // 2
    k = np.linspace(0, n_pairs - 1, min(n_pairs, _HIST_MAX_VALUES)).astype(np.int64)
    # invert the condensed index k -> (i, j) with i < j
    i = (m - 2 - np.floor(np.sqrt(-8 * k + 4 * m * (m - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = (k + i + 1 - m * (m - 1) // 2 + (m - i) * ((m - i) - 1) // 2).astype(np.int64)
    return i, j
