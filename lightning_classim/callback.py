"""The Lightning callback: per-epoch class-similarity structure in TensorBoard, W&B and on disk."""

from __future__ import annotations

import collections
import concurrent.futures
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
from typing_extensions import override

from lightning_classim.analysis import (
    DistanceKind,
    LinkageMethod,
    StructureResult,
    _check_choice,
    _check_order,
    analyze,
    check_group_args,
    check_taxonomy,
)
from lightning_classim.artifacts import write_run_info, write_snapshot
from lightning_classim.functional import NanStrategy, ScoresType, _check_args
from lightning_classim.metric import ClassSimilarity
from lightning_classim.render import render_heatmap

__all__ = ["ClassSimilarityCallback"]

_HIST_MAX_VALUES = 1_000_000


@dataclass
class _Payload:
    """What one epoch logs: produced on the worker thread, handed to the loggers on the training thread."""

    epoch: int
    step: int
    scalars: dict[str, float]
    image: np.ndarray | None = None
    markdown: str = ""
    table_columns: list[str] = field(default_factory=list)
    table_rows: list[list[Any]] = field(default_factory=list)
    histogram: np.ndarray | None = None


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
        max_groups: largest number of groups of the automatic choice.
        taxonomy: a known class structure (a label per class, a list of levels, or a nested dict of class names):
            adds ``taxonomy_ari`` and ``taxonomy_tree_corr``.
        nan_strategy: ``"error"`` or ``"skip"`` rows with non-finite scores.
        save_dir: folder of the per-epoch files (default: ``<trainer.log_dir>/<tag_prefix>``).
        tag_prefix: prefix of every logged tag, and the name of the default ``save_dir`` sub-folder.
        max_pixels: largest side of the heatmap image (larger matrices are block-averaged).
        cmap: matplotlib colormap of the heatmap.
        async_analysis: analyse, render and write on a worker thread so training goes on meanwhile (the loggers
            are called from the training thread, at its next step or at the end of fit).
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
        max_groups: int = 30,
        taxonomy: Any = None,
        nan_strategy: NanStrategy = "error",
        save_dir: str | Path | None = None,
        tag_prefix: str = "classim",
        max_pixels: int = 1024,
        cmap: str = "RdBu_r",
        async_analysis: bool = True,
        reference: str | Path | Sequence[int] | None = None,
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
        self._active = False
        self._seen_batches = 0
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: collections.deque[concurrent.futures.Future[_Payload]] = collections.deque()
        self._lock = threading.Lock()
        self._previous: StructureResult | None = None
        self._history: list[dict[str, float]] = []
        self._warned_loggers: set[str] = set()
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
            try:
                target = pl_module.get_submodule(self.module)
            except AttributeError:
                names = [n for n, _ in pl_module.named_modules() if n][:20]
                raise ValueError(
                    f"Expected argument `module` to name a submodule of {type(pl_module).__name__}, but got "
                    f"{self.module!r}. Submodules: {names}."
                ) from None
            self._hook = target.register_forward_hook(self._capture_hook)
        if trainer.is_global_zero:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            write_run_info(
                self.save_dir,
                {
                    "num_classes": self.num_classes,
                    "class_names": self.class_names or [str(i) for i in range(self.num_classes)],
                    "scores": self.scores,
                    "multilabel": self.multilabel,
                    "tag_prefix": self.tag_prefix,
                    "analysis": {k: v for k, v in self.analysis_kwargs.items() if k != "taxonomy"},
                    "reference": str(self.reference) if isinstance(self.reference, (str, Path)) else None,
                },
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._finish(trainer)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
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
        self._seen_batches = 0
        if self._active:
            self.metric.reset()
            self.metric.to(pl_module.device)

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
        self._update(out.flatten(0, -2) if out.ndim > 2 else out)

    def _update(self, scores: Tensor) -> None:
        if scores.ndim == 2 and scores.shape[1] != self.num_classes:
            raise ValueError(
                f"ClassSimilarityCallback(num_classes={self.num_classes}) got scores of shape {tuple(scores.shape)}. "
                "Set `num_classes` to the classifier's output width, or capture the right output with "
                "`output_key=` or `module=`."
            )
        self.metric.update(scores.detach())
        self._seen_batches += 1

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
        if not self._active or self.module is not None:
            return
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
        self._update(scores)

    # ------------------------------------------------------------------------------------------ epoch end

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        start = time.perf_counter()
        matrix = self.metric.compute()  # collective: every rank takes part in the sync
        if not trainer.is_global_zero:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        sim = matrix.detach().cpu().numpy()
        constant = self.metric.constant_classes.tolist()
        if self.async_analysis:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="classim")
            self._pending.append(self._executor.submit(self._analyse, sim, epoch, step, constant))
        else:
            future: concurrent.futures.Future[_Payload] = concurrent.futures.Future()
            try:
                future.set_result(self._analyse(sim, epoch, step, constant))
            except Exception as err:  # reported by _drain like a worker error
                future.set_exception(err)
            self._pending.append(future)
            self._drain(trainer)
        self.epoch_end_wait_s.append(time.perf_counter() - start)

    def _analyse(self, sim: np.ndarray, epoch: int, step: int, constant: list[int]) -> _Payload:
        """Analyse, render and write one epoch (worker thread). Returns what the loggers get."""
        start = time.perf_counter()
        with self._lock:
            previous = self._previous
        result = analyze(sim, class_names=self.class_names, previous=previous, **self.analysis_kwargs)
        if self._ref_order is not None:  # the reference's order (and its groups, when it came from a run folder)
            order, groups = self._ref_order, self._ref_groups
        else:
            order, groups = result.order, result.groups
        image = render_heatmap(result.similarity, order, groups, max_pixels=self.max_pixels, cmap=self.cmap)
        assert self.save_dir is not None
        write_snapshot(self.save_dir, epoch, step, result, image, extra={"constant_classes": constant})
        with self._lock:
            self._previous = result
        scalars = {k: float(v) for k, v in result.metrics.items() if np.isfinite(v)}
        scalars["constant_classes"] = float(len(constant))
        columns = ["group", "size", "cohesion", "separation", "nearest", "members"]
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
        self.analysis_s.append(time.perf_counter() - start)
        return _Payload(
            epoch=epoch,
            step=step,
            scalars=scalars,
            image=image,
            markdown=result.summary_markdown(),
            table_columns=columns,
            table_rows=rows,
            histogram=_offdiag_sample(result.similarity),
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
            for logger in trainer.loggers:
                self._log(logger, payload)

    def _log(self, logger: Logger, payload: _Payload) -> None:
        prefix = self.tag_prefix
        scalars = {f"{prefix}/{k}": v for k, v in payload.scalars.items()}
        try:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                if payload.image is not None:
                    writer.add_image(f"{prefix}/heatmap", payload.image, payload.step, dataformats="HWC")
                writer.add_text(f"{prefix}/groups", payload.markdown, payload.step)
                if payload.histogram is not None and payload.histogram.size:
                    writer.add_histogram(f"{prefix}/similarity", payload.histogram, payload.step)
                logger.log_metrics(scalars, payload.step)
                writer.flush()
            elif isinstance(logger, WandbLogger):
                import wandb

                run = logger.experiment
                data: dict[str, Any] = dict(scalars)
                if payload.image is not None:
                    data[f"{prefix}/heatmap"] = wandb.Image(payload.image, caption=f"epoch {payload.epoch}")
                data[f"{prefix}/groups"] = wandb.Table(columns=payload.table_columns, data=list(payload.table_rows))  # type: ignore[arg-type]
                if payload.histogram is not None and payload.histogram.size:
                    data[f"{prefix}/similarity"] = wandb.Histogram(payload.histogram.tolist())
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
        if prev is None:
            return {"version": 1}
        return {
            "version": 1,
            "num_classes": self.num_classes,
            "similarity": torch.from_numpy(prev.similarity.copy()),
            "order": torch.from_numpy(prev.order.astype(np.int64)),
            "groups": torch.from_numpy(prev.groups.astype(np.int64)),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("similarity") is None or state_dict.get("num_classes", self.num_classes) != self.num_classes:
            return
        sim = state_dict["similarity"].numpy().astype(np.float32)
        order = state_dict["order"].numpy().astype(np.intp)
        groups = state_dict["groups"].numpy().astype(np.intp)
        with self._lock:
            self._previous = StructureResult(
                similarity=sim,
                order=order,
                linkage=np.zeros((0, 4)),
                groups=groups,
                summary=(),
                metrics={},
                class_names=tuple(self.class_names or [str(i) for i in range(self.num_classes)]),
            )


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
