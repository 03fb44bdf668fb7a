"""The Lightning callback: per-epoch class-similarity structure in every tracker and on disk.

It only does hooks, capture, threading, state and logging; the analysis of an epoch is
:func:`~lightning_classim.callback.analyse_epoch`, the sources are :mod:`lightning_classim.sources`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torchmetrics import Metric
from typing_extensions import override

from lightning_classim._lightning import CallbackBase
from lightning_classim._streaming import NanStrategy, ScoresType, check_args
from lightning_classim._validation import check_bool, check_int, check_names, check_order
from lightning_classim.callback._capture import Capture
from lightning_classim.callback._epoch import analyse_epoch, write_epoch
from lightning_classim.callback._loggers import Dispatch, EpochLog
from lightning_classim.callback._run_folder import RunFolder, default_save_dir
from lightning_classim.callback._state import results_from_state, results_to_state
from lightning_classim.callback._trackers import register_built_in
from lightning_classim.callback._worker import Worker
from lightning_classim.head import ClassEmbeddings
from lightning_classim.options import StructureOptions
from lightning_classim.render import HeatmapOptions
from lightning_classim.sources import (
    BatchInputs,
    HeadSource,
    ScoresSource,
    Source,
    SourceContext,
    as_sources,
    find_submodule,
)
from lightning_classim.structure import StructureResult, check_taxonomy

__all__ = ["ClassSimilarityCallback"]


class ClassSimilarityCallback(CallbackBase):
    """Log the class-similarity structure of a classifier every validation epoch.

    Captures the scores of every validation batch with no change to the model, streams them into a
    :class:`~lightning_classim.ClassSimilarity` metric on the model's device, and at the end of each validated epoch
    computes the matrix on every process, then, on rank 0 and on a worker thread, orders it
    (:func:`~lightning_classim.analyze`), renders it and writes the epoch's files to ``save_dir``; the heatmap, the
    group table, a histogram of the similarity values and the structure scalars (``n_groups``, ``cophenetic_corr``,
    ``within_minus_between``, ``drift`` and ``group_ari`` against the previous epoch, ...) then go to every logger in
    ``trainer.loggers``.

    Args:
        num_classes: number of classes ``m``.
        class_names: names of the classes (for summaries and labelled files).
        scores: ``"logits"``, ``"probs"`` or ``"ranks"`` (see :class:`~lightning_classim.ClassSimilarity`).
        multilabel: the classifier is multi-label (sigmoid for ``scores="probs"``).
        nan_strategy: ``"error"`` or ``"skip"`` rows with non-finite scores.
        every_n_epochs: analyse every n-th validation epoch during ``fit`` (``trainer.validate`` always does).
        output_key: key of the scores in a dict returned by ``validation_step``.
        module: name of a submodule (e.g. ``"fc"`` or ``"head.linear"``) whose forward output holds the scores;
            then ``validation_step`` may return anything.
        target_key: where the targets are in a validation batch (for the sources that need them): an index into a
            tuple/list batch (default 1: ``(x, y)``) or a key of a dict batch.
        options: how to order, cut and search the tree (:class:`~lightning_classim.StructureOptions`; default: its
            defaults). A source with options of its own uses those instead.
        taxonomy: a known class structure (a label per class, a list of levels, or a nested dict of class names):
            adds ``taxonomy_ari`` and ``taxonomy_tree_corr``.
        sources: the similarity views to compute, the first being the *primary* one (its order is used for every
            picture, and the others are compared with it): strings for the built-in views (``"scores"``,
            ``"features:<module>"``, ``"welch:<module>"``, ``"weights:<module>"``, ``"confusion"``,
            ``"cooccurrence"``) or :class:`~lightning_classim.sources.Source` objects (with options of their own,
            or views of yours, e.g. :class:`~lightning_classim.sources.MetricSource`).
        reference: draw the logged heatmaps in a fixed class order, to compare runs image by image: a previous
            run's folder (its last epoch's order and groups) or an order array. The analysis still computes this
            run's own order and groups (saved to disk as usual); only the pictures use the reference.
        save_dir: folder of the per-epoch files (default: ``<trainer.log_dir>/<tag_prefix>``).
        tag_prefix: prefix of every logged tag, and the name of the default ``save_dir`` sub-folder.
        heatmap: the heatmap's largest side and colormap (:class:`~lightning_classim.render.HeatmapOptions`).
        async_analysis: analyse, render and write on a worker thread so training goes on meanwhile (the loggers
            are called from the training thread, at its next step or at the end of fit).
        explorer: write the epoch's interactive explorer (``explorer.html``, one self-contained page: see
            :mod:`lightning_classim.explorer`) into its folder, and log it to W&B (``wandb.Html``), MLflow and Comet
            (as a file); ``classim explore`` writes one over all epochs.
        head: the classifier's final linear layer (e.g. ``"fc"``), for many classes: the score correlation of its
            logits comes exactly from the ``D x D`` covariance of its input features (a forward hook on its input;
            its weight read at each epoch end; :class:`~lightning_classim.sources.HeadSource`), in place of the
            ``"scores"`` source, and is analysed without the ``m x m`` matrix above 4,096 classes (see
            ``docs/callback.md``). Needs ``scores="logits"``.

    Raises:
        ValueError: for bad arguments (at construction); for a bad environment (at ``setup``).

    Example:
        >>> from lightning_classim import ClassSimilarityCallback, StructureOptions
        >>> cb = ClassSimilarityCallback(num_classes=10, options=StructureOptions(method="average"))
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
        nan_strategy: NanStrategy = "error",
        every_n_epochs: int = 1,
        output_key: str = "logits",
        module: str | None = None,
        target_key: int | str = 1,
        options: StructureOptions | None = None,
        taxonomy: Any = None,
        sources: Sequence[str | Source] = ("scores",),
        reference: str | Path | Sequence[int] | None = None,
        save_dir: str | Path | None = None,
        tag_prefix: str = "classim",
        heatmap: HeatmapOptions | None = None,
        async_analysis: bool = True,
        explorer: bool = True,
        head: str | None = None,
    ) -> None:
        super().__init__()
        num_classes = check_args(num_classes, scores, nan_strategy, "zero")
        self.num_classes = num_classes
        self.class_names = check_names(class_names, num_classes) if class_names is not None else None
        self.scores: ScoresType = scores
        self.multilabel = check_bool("multilabel", multilabel)
        self.nan_strategy: NanStrategy = nan_strategy
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        if not isinstance(tag_prefix, str) or not tag_prefix or tag_prefix.strip("/") != tag_prefix:
            raise ValueError(
                f"Expected argument `tag_prefix` to be a non-empty name without leading or trailing '/', but got "
                f"{tag_prefix!r}."
            )
        self.tag_prefix = tag_prefix
        self.options = _checked(options, StructureOptions, "options", "StructureOptions(method='average')")
        self.heatmap = _checked(heatmap, HeatmapOptions, "heatmap", "HeatmapOptions(max_pixels=512)")
        self.sources = as_sources(sources)
        self.head = head
        if head is not None:
            self.sources = _with_head(self.sources, head, scores)
        for src in self.sources:
            try:
                (src.options or self.options).check_for(num_classes)
            except ValueError as err:
                raise ValueError(f"Source {src.name!r}: {err}") from None
        if taxonomy is not None:
            check_taxonomy(taxonomy, num_classes, self.class_names)
        self.taxonomy = taxonomy
        self.reference = reference
        self._reference: tuple[np.ndarray, np.ndarray | None] | None = None
        self._reference_result: StructureResult | None = None
        if reference is not None and not isinstance(reference, (str, Path)):
            self._reference = (check_order(reference, num_classes, "reference"), None)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.async_analysis = check_bool("async_analysis", async_analysis)
        self.explorer = check_bool("explorer", explorer)
        self._capture = Capture(num_classes, output_key, module, target_key)
        self._needs_scores = any(src.needs_scores for src in self.sources)
        self._needs_target = any(src.needs_target for src in self.sources)
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._stream("validate", 0)  # makes the sources' metrics now: a bad source fails at construction
        self._stage: str | None = None
        self._probe = False
        self._validations = 0
        self._worker: Worker[EpochLog] = Worker(self.async_analysis)
        self._history: list[dict[str, Any]] = []
        self._dispatch = Dispatch()
        self._folder = RunFolder()
        self._claimed = False
        #: Seconds the training thread spent at each analysed epoch end (compute + hand-over; the analysis itself
        #: runs on the worker thread when ``async_analysis``).
        self.epoch_end_wait_s: list[float] = []
        #: Seconds the analysis, rendering and writing of each epoch took (on whichever thread ran them).
        self.analysis_s: list[float] = []

    @property
    def metric(self) -> Metric | None:
        """The primary source's metric of the (first) validation dataloader (a ``ClassSimilarity`` for "scores")."""
        return self._stream("validate", 0).metrics[self.sources[0].name]

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(tag_prefix=self.tag_prefix, scores=self.scores)

    def _context(self, pl_module: torch.nn.Module | None = None, trainer: pl.Trainer | None = None) -> SourceContext:
        def reduce_max(value: int) -> int:
            if trainer is None or pl_module is None:
                return value
            device = next(pl_module.parameters(), torch.zeros(())).device
            return int(trainer.strategy.reduce(torch.tensor(value, device=device), reduce_op="max"))

        return SourceContext(self.num_classes, self.scores, self.multilabel, self.nan_strategy, pl_module, reduce_max)

    def _names(self) -> list[str]:
        """The class names, or the class indices as strings."""
        return self.class_names or [str(i) for i in range(self.num_classes)]

    def _stream(self, stage: str, index: int, many: bool = False) -> _Stream:
        key = (stage, index)
        if key not in self._streams:
            ctx = self._context()
            self._streams[key] = _Stream(stage, index, many, {src.name: src.make_metric(ctx) for src in self.sources})
        stream = self._streams[key]
        stream.many = many or stream.many
        return stream

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
            self.save_dir = default_save_dir(trainer, self.tag_prefix, log_dir)
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is not self and isinstance(other, ClassSimilarityCallback):
                theirs = other.save_dir or default_save_dir(trainer, other.tag_prefix, log_dir)
                if Path(theirs).resolve() == self.save_dir.resolve():
                    raise ValueError(
                        f"Two ClassSimilarityCallback instances would write into one folder, {self.save_dir}: give "
                        "them different `tag_prefix` (e.g. 'classim' and 'classim_ranks') or `save_dir`."
                    )
        if isinstance(self.reference, (str, Path)) and self._reference_result is None:
            self._reference_result = self._load_reference(self.reference)
            self._reference = (self._reference_result.order.astype(np.intp), self._reference_result.groups)
        if not self._capture.attached:
            ctx = self._context(pl_module)
            for src in self.sources:
                src.setup(ctx)
            layers, input_layers = {}, {}
            for src in self.sources:  # one hook per submodule, shared by the sources it feeds
                for name in src.hooked_modules:
                    layers[name] = find_submodule(pl_module, name, f"sources ({src.name!r})")
                for name in src.hooked_inputs:
                    input_layers[name] = find_submodule(pl_module, name, f"sources ({src.name!r})")
            module = self._capture.module
            self._capture.attach(find_submodule(pl_module, module, "module") if module else None, layers, input_layers)
        register_built_in()
        message, removed = self._folder.open(self.save_dir) if trainer.is_global_zero else ("", [])
        message = trainer.strategy.broadcast(message)  # every process fails alike, before the first step
        if message:
            raise ValueError(message)
        if removed:
            self._dispatch.once("stale", str(self.save_dir), f"removed {len(removed)} leftovers of an interrupted "
                                f"run of this package in {self.save_dir}: {', '.join(p.name for p in removed[:3])}"
                                f"{', ...' if len(removed) > 3 else ''}.")  # fmt: skip
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # so that a tracker's runs can be filtered by them
                self._dispatch.params(logger, self._run_params())
                if _disabled_comet(logger):
                    self._dispatch.once("comet", "", (
                        "CometLogger(online=False) records nothing (Lightning #21617: it disables its experiment), "
                        "so Comet gets none of this callback's pictures, tables or scalars. Give it a real offline "
                        "experiment: docs/callback.md, 'Comet offline', has a five-line OfflineCometLogger. The "
                        f"files are on disk in {self.save_dir}."))  # fmt: skip

    def _claim(self, trainer: pl.Trainer) -> None:
        """Make the run folder this run's, once the checkpoint (if any) is restored and before the first step."""
        if self._claimed:  # the same on every process
            return
        message = self._folder.claim(self._run_infos()) if trainer.is_global_zero else ""
        message = trainer.strategy.broadcast(message)
        if message:
            raise ValueError(message)
        self._claimed = True

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._claim(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":
            self._claim(trainer)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._claim(trainer)

    def _load_reference(self, folder: str | Path) -> StructureResult:
        from lightning_classim.runs import RunError, load_run

        try:
            ref = load_run(folder).snapshots[-1].result
        except RunError as err:
            raise ValueError(f"Expected argument `reference` to be a readable run folder, but: {err}") from None
        if ref.num_classes != self.num_classes:
            raise ValueError(
                f"Expected argument `reference` to be a run over {self.num_classes} classes, but {folder} has "
                f"{ref.num_classes}."
            )
        return ref

    def _run_params(self) -> dict[str, Any]:
        """What the trackers get as run parameters: ``classim/num_classes``, ``classim/scores``, ..."""
        options = self.sources[0].options or self.options
        params = {"num_classes": self.num_classes, "scores": self.scores, "multilabel": self.multilabel,
                  "method": options.method, "sources": ",".join(src.name for src in self.sources)}  # fmt: skip
        return {f"{self.tag_prefix}/{k}": v for k, v in params.items()}

    def _run_infos(self) -> dict[str, dict[str, Any]]:
        """``run.json`` of the run folder and of each other source's folder."""
        primary = self.sources[0]
        common = {"num_classes": self.num_classes, "class_names": self._names()}
        taxonomy = None  # its levels as integer labels, coarsest first (the explorer's taxonomy order)
        if self.taxonomy is not None:
            taxonomy = [level.tolist() for level in check_taxonomy(self.taxonomy, self.num_classes, self._names())]
        infos = {"": {
            **common, "scores": self.scores, "multilabel": self.multilabel, "tag_prefix": self.tag_prefix,
            "analysis": (primary.options or self.options).to_dict(),
            "reference": str(self.reference) if isinstance(self.reference, (str, Path)) else None,
            "sources": [src.name for src in self.sources], "source": primary.name, "taxonomy": taxonomy,
        }}  # fmt: skip
        for src in self.sources[1:]:
            infos[f"sources/{src.tag}"] = {**common, "source": src.name, "primary": primary.name,
                                           "analysis": (src.options or self.options).to_dict()}  # fmt: skip
        return infos

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._hand_over(trainer, wait=True)
        self._capture.detach()
        self._worker.shutdown()
        self._folder.close()
        self._claimed = False

    # ------------------------------------------------------------------------------------------ capture

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hand_over(trainer)
        if trainer.sanity_checking:  # check the capture on one batch, so that a bad set-up fails in seconds
            self._probe = self._capture.active = True
            return
        if trainer.state.fn == "fit":
            self._validations += 1
            if self._validations % self.every_n_epochs:
                return
        self._begin("validate", trainer, pl_module)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hand_over(trainer)
        self._begin("test", trainer, pl_module)

    def _begin(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_val_batches if stage == "validate" else trainer.num_test_batches
        count = max(1, len(batches)) if isinstance(batches, list) else 1
        for index in range(count):
            for metric in self._stream(stage, index, many=count > 1).metrics.values():
                if metric is not None:
                    metric.reset()
                    metric.to(pl_module.device)
        self._stage, self._capture.active = stage, True
        self._check_sampler(trainer, stage)

    def _check_sampler(self, trainer: pl.Trainer, stage: str) -> None:
        """Warn when a distributed sampler repeats samples to even out the processes (the matrix is not the data's)."""
        loaders = trainer.val_dataloaders if stage == "validate" else trainer.test_dataloaders
        for index, loader in enumerate(loaders if isinstance(loaders, (list, tuple)) else [loaders]):
            sampler = getattr(loader, "sampler", None)
            if not isinstance(sampler, torch.utils.data.DistributedSampler):
                continue
            try:
                size = len(sampler.dataset)  # type: ignore[arg-type]
            except TypeError:
                continue
            extra = int(getattr(sampler, "total_size", size)) - size  # 0 for a sampler that does not pad
            if extra:
                self._dispatch.once("padding", f"{stage}{index}", (
                    f"the {stage} dataloader {index} has {size} samples over {sampler.num_replicas} processes, so "
                    f"Lightning's DistributedSampler repeats {extra} of them and the similarity is not exactly the "
                    "data's. Make the set size a multiple of the number of processes, or pass "
                    "`Trainer(use_distributed_sampler=False)` with a sampler that does not pad, such as "
                    "`pytorch_lightning.overrides.distributed.UnrepeatedDistributedSampler`."))  # fmt: skip

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
        self._feed("validate", pl_module, outputs, batch, dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._feed("test", pl_module, outputs, batch, dataloader_idx)

    def _feed(self, stage: str, pl_module: pl.LightningModule, outputs: Any, batch: Any, index: int) -> None:
        if not self._capture.active:
            return
        try:
            scores = self._capture.scores(outputs) if self._needs_scores else None
            needing = [src.name for src in self.sources if src.needs_target]
            target = self._capture.targets(batch, needing) if self._needs_target else None
            inputs = BatchInputs(scores, target, dict(self._capture.features))
            for src in self.sources:
                for module in src.hooked_modules:
                    inputs.feature(module, src.name)
                for module in src.hooked_inputs:
                    inputs.feature(f"input:{module}", src.name)
            if self._probe:  # the sanity check: what the sources need is there; nothing is accumulated
                self._probe = self._capture.active = False
                ctx = self._context(pl_module)
                for src in self.sources:
                    src.check(inputs, ctx)
                return
            if stage != self._stage:
                return
            ctx = self._context(pl_module)
            metrics = self._stream(stage, index).metrics
            for src in self.sources:
                metrics[src.name] = src.update(metrics[src.name], inputs, ctx)
        finally:
            self._capture.features.clear()

    # ------------------------------------------------------------------------------------------ epoch end

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._probe or trainer.sanity_checking:
            self._probe = self._capture.active = False
            return
        self._end("validate", trainer, pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end("test", trainer, pl_module)

    def _end(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._capture.active or self._stage != stage:
            return
        self._capture.active, self._stage = False, None
        start = time.perf_counter()
        ctx = self._context(pl_module, trainer)
        streams = sorted((s for s in self._streams.values() if s.stage == stage), key=lambda s: s.index)
        for stream in streams:
            matrices: dict[str, Any] = {}
            for src in self.sources:  # collective: every rank takes part in each sync, in the same order
                matrix = src.compute(stream.metrics[src.name], ctx)
                if isinstance(matrix, ClassEmbeddings):  # the head route: class vectors, not the m x m matrix
                    matrices[src.name] = ClassEmbeddings(matrix.vectors.cpu(), matrix.constant_classes.cpu())
                else:
                    matrices[src.name] = matrix.detach().cpu().float().numpy()
            if not trainer.is_global_zero:
                continue
            undefined = {src.name: src.undefined_classes(stream.metrics[src.name]) for src in self.sources}
            while self._worker.pending >= MAX_PENDING:  # a bounded queue: the training thread waits for the oldest
                self._dispatch.once(
                    "queue",
                    "",
                    f"the analysis is slower than the {stage} epochs come: the training "
                    f"thread waits for it (at most {MAX_PENDING} epochs are queued, so none is lost "
                    "or piles up in memory). Pass `every_n_epochs` to analyse fewer epochs.",
                )
                self._hand_over(trainer, oldest=True)
            self._worker.submit(self._analyse, stream, matrices, undefined, trainer.current_epoch, trainer.global_step)
        if trainer.is_global_zero:
            if not self.async_analysis:
                self._hand_over(trainer)
            self.epoch_end_wait_s.append(time.perf_counter() - start)

    def _analyse(
        self, stream: _Stream, matrices: dict[str, np.ndarray], undefined: dict[str, list[int]], epoch: int, step: int
    ) -> EpochLog:
        """Analyse, render and write one epoch of a stream, every source (worker thread). Returns what to log."""
        start = time.perf_counter()
        assert self.save_dir is not None
        prefix = stream.prefix(self.tag_prefix)
        analysis = analyse_epoch(
            matrices, self.sources, options=self.options, class_names=self.class_names, taxonomy=self.taxonomy,
            previous=dict(stream.previous), reference=self._reference, reference_result=self._reference_result,
            heatmap=self.heatmap, undefined=undefined, title=f"{prefix}{stream.suffix}, epoch {epoch}",
        )  # fmt: skip
        stream.previous = dict(analysis.results)  # one assignment: readers see the old or the new dict
        error, folders, page = "", [], None
        if self.explorer:
            try:
                page = self._explorer_page(epoch, step, analysis.results[self.sources[0].name], prefix)
            except Exception as err:  # never lose the epoch for its explorer
                error = f"explorer: {type(err).__name__}: {err}"
        try:
            folders = write_epoch(stream.folder(self.save_dir), epoch, step, self.sources, analysis, undefined,
                                  run_id=self._folder.run_id, explorer_page=page)  # fmt: skip
        except OSError as err:  # a full disk: nothing of the epoch stays, the loggers still get it
            error = f"{type(err).__name__}: {err}"
        self.analysis_s.append(time.perf_counter() - start)
        return EpochLog(epoch, step, analysis.scalars, analysis.panels, analysis.at_max_groups, analysis.notes,
                        prefix=prefix, suffix=stream.suffix, write_error=error, stage=stream.stage,
                        dataloader_idx=stream.index, folders=folders)  # fmt: skip

    def _explorer_page(self, epoch: int, step: int, result: StructureResult, prefix: str) -> str:
        """The epoch's explorer page, written beside its files."""
        from lightning_classim.explorer import ExplorerEpoch, explorer_html

        taxonomy = None
        if self.taxonomy is not None:
            taxonomy = [level.tolist() for level in check_taxonomy(self.taxonomy, self.num_classes, self._names())]
        reference = None if self._reference is None else self._reference[0].tolist()
        return explorer_html([ExplorerEpoch(epoch, step, result)], title=f"{prefix}, epoch {epoch}",
                             taxonomy=taxonomy, reference_order=reference)  # fmt: skip

    # ------------------------------------------------------------------------------------------ logging

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._worker.first_done():
            self._hand_over(trainer)

    def _hand_over(self, trainer: pl.Trainer, wait: bool = False, oldest: bool = False) -> None:
        """Hand finished epochs to the loggers (training thread); report worker errors as warnings."""
        futures = [f for f in [self._worker.oldest()] if f is not None] if oldest else self._worker.finished(wait)
        for future in futures:
            try:
                log = future.result()
            except Exception as err:
                rank_zero_warn(
                    f"ClassSimilarityCallback: the analysis of an epoch failed and was skipped: "
                    f"{type(err).__name__}: {err}",
                    category=UserWarning,
                )
                continue
            self._history.append({"epoch": log.epoch, "step": log.step, "stage": log.stage,
                                  "dataloader_idx": log.dataloader_idx, **log.scalars})  # fmt: skip
            self._dispatch.advise(log, self.sources[0].name)
            for logger in trainer.loggers:
                self._dispatch.send(logger, log, self.save_dir)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hand_over(trainer, wait=True)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":
            self._hand_over(trainer, wait=True)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hand_over(trainer, wait=True)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            self._hand_over(trainer, wait=True)
        self._folder.close()
        self._claimed = False

    # ------------------------------------------------------------------------------------------ results, checkpoints

    @property
    def history(self) -> list[dict[str, Any]]:
        """The structure scalars of every analysed epoch that reached the loggers, oldest first.

        Each entry has ``epoch``, ``step``, ``stage`` (``"validate"`` or ``"test"``), ``dataloader_idx`` and the
        scalars by name (``n_groups``, ``features_layer4/n_groups``, ...), without the tag prefix.
        """
        return list(self._history)

    @property
    def last_result(self) -> StructureResult | None:
        """The primary source's most recent analysis of the (first) validation dataloader.

        It waits for nothing: it may lag behind while the worker runs.
        """
        return self.last_results.get(self.sources[0].name)

    @property
    def last_results(self) -> dict[str, StructureResult]:
        """Every source's most recent analysis of the (first) validation dataloader, by source name."""
        stream = self._streams.get(("validate", 0))
        return dict(stream.previous) if stream is not None else {}

    def results_of(self, stage: str = "validate", dataloader_idx: int = 0) -> dict[str, StructureResult]:
        """Every source's most recent analysis of one stage (``"validate"`` or ``"test"``) and dataloader."""
        stream = self._streams.get((stage, dataloader_idx))
        return dict(stream.previous) if stream is not None else {}

    @override
    def state_dict(self) -> dict[str, Any]:
        self._worker.wait_all()  # a checkpoint taken while an analysis runs waits for it
        streams = {f"{s.stage}/{s.index}": results_to_state(s.previous) for s in self._streams.values() if s.previous}
        return {"version": 2, "num_classes": self.num_classes, "validations": self._validations,
                "results": streams.pop("validate/0", {}), "streams": streams,
                "run_id": self._folder.run_id}  # fmt: skip

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", 1) if isinstance(state_dict, dict) else None
        if type(version) is int and (
            version < 2 or state_dict.get("num_classes", self.num_classes) != self.num_classes
        ):
            if state_dict.get("similarity") is not None or state_dict.get("results"):
                rank_zero_warn(
                    "ClassSimilarityCallback: the checkpoint's last analysis is from an older version or another "
                    "number of classes and is not restored; the first epoch after resuming has no drift.",
                    category=UserWarning,
                )
            return
        try:
            validations, restored = _restored(state_dict, {src.name for src in self.sources})
        except Exception as err:  # a hand-damaged state: resume without it, never fail the fit for it
            rank_zero_warn(
                "ClassSimilarityCallback: the checkpoint's state of this callback is damaged and is not restored "
                f"({type(err).__name__}: {str(err)[:200]}); training resumes, and the first epoch after it has no "
                "drift.",
                category=UserWarning,
            )
            return
        self._validations = validations
        for (stage, index), results in restored.items():
            self._stream(stage, index).previous = results
        run_id = state_dict.get("run_id")
        self._folder.resumed_id = run_id if isinstance(run_id, str) else None


MAX_PENDING = 2
"""Epochs queued for the worker at most; with more, the training thread waits for the oldest (none is lost)."""


@dataclass
class _Stream:
    """One stage's dataloader: its sources' metrics and last analyses, its folder and its tags."""

    stage: str
    index: int
    many: bool
    metrics: dict[str, Metric | None]
    previous: dict[str, StructureResult] = field(default_factory=dict)

    def folder(self, save_dir: Path) -> Path:
        """``save_dir``, ``save_dir/test``, and ``/dataloader_idx_N`` below them when the stage has several."""
        out = save_dir / "test" if self.stage == "test" else save_dir
        return out / f"dataloader_idx_{self.index}" if self.many else out

    def prefix(self, tag_prefix: str) -> str:
        """``classim``, or ``classim/test``."""
        return f"{tag_prefix}/test" if self.stage == "test" else tag_prefix

    @property
    def suffix(self) -> str:
        """``""``, or ``/dataloader_idx_N`` when the stage has several dataloaders (as Lightning tags them)."""
        return f"/dataloader_idx_{self.index}" if self.many else ""


def _with_head(sources: list[Source], head: str, scores: str) -> list[Source]:
    """The sources with the head route in place of ``"scores"`` (first, when there is no ``"scores"``)."""
    if not isinstance(head, str) or not head:
        raise ValueError(f"Expected argument `head` to name the final linear layer (e.g. 'fc'), but got {head!r}.")
    if scores != "logits":
        raise ValueError(
            f"Expected scores='logits' with `head={head!r}` (the head route correlates the logits of a linear layer), "
            f"but got scores={scores!r}. Probabilities and ranks are not linear in the features: drop `head` for the "
            "dense route (up to 40,000 classes)."
        )
    out = [HeadSource(head, src.options) if isinstance(src, ScoresSource) else src for src in sources]
    if not any(isinstance(src, HeadSource) and src.module == head for src in out):
        out.insert(0, HeadSource(head))
    return as_sources(out)


def _restored(state: Any, names: set[str]) -> tuple[int, dict[tuple[str, int], dict[str, Any]]]:
    """The validations count and each stream's results of a checkpoint's state (raises on any damage)."""
    if not isinstance(state, dict) or type(state.get("version")) is not int:
        raise ValueError("it is not a dict with an integer 'version'")
    validations = state.get("validations", 0)
    if type(validations) is not int or validations < 0:
        raise ValueError(f"'validations' is {validations!r:.40}")
    parts = {"validate/0": state.get("results", {}), **state.get("streams", {})}
    out = {}
    for key, part in parts.items():
        stage, _, index = str(key).partition("/")
        if stage not in ("validate", "test") or not index.isdigit():
            raise ValueError(f"unknown stream {key!r:.40}")
        results = {k: v for k, v in results_from_state(part).items() if k in names}
        if results:
            out[(stage, int(index))] = results
    return validations, out


def _disabled_comet(logger: Any) -> bool:
    """Whether a Lightning ``CometLogger`` was made with ``online=False`` (its experiment is then disabled)."""
    config = getattr(logger, "_comet_config", None)
    return type(logger).__name__ == "CometLogger" and bool(getattr(config, "disabled", False))


def _checked(value: Any, cls: type, name: str, example: str) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise ValueError(
            f"Expected argument `{name}` to be a {cls.__name__} or None, but got {type(value).__name__}. "
            f"Example: {example}."
        )
    return value
