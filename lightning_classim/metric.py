"""The streaming class-similarity metric."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from lightning_classim._streaming import (
    Block,
    NanStrategy,
    ScoresType,
    UndefinedPolicy,
    check_args,
    check_preds,
    compute_matrix,
    finite_rows,
    fold_block,
    merge_stats,
    new_states,
    transform_scores,
    update_block,
    warn_undefined,
)
from lightning_classim._validation import check_bool

__all__ = ["DENSE_MAX_CLASSES", "ClassSimilarity"]

#: The dense state takes ``12 m^2`` bytes (the float64 state and the block): 19 GB at this many classes. Above it,
#: :class:`ClassSimilarity` refuses, pointing to :class:`~lightning_classim.HeadSimilarity` for a linear head's
#: logits.
DENSE_MAX_CLASSES = 40_000


class ClassSimilarity(Metric):
    r"""Streaming class-similarity matrix: the Pearson correlation of the classes' prediction scores.

    For ``m`` classes, the similarity of classes :math:`j_1` and :math:`j_2` is the Pearson correlation of their
    scores :math:`P_{j_1}` and :math:`P_{j_2}` over all validation samples seen (Alsallakh et al., 2020). No
    labels are needed, so it works for single- and multi-label classifiers alike.

    Each :meth:`update` adds a batch to running sums on the device of the scores with one in-place matrix
    product and makes no host synchronisation; :meth:`compute` returns the ``(m, m)`` matrix. The state is the
    count, the mean and the centred cross-product sum in float64; blocks of batches and processes merge by Chan's
    pairwise update, so the result matches ``numpy.corrcoef`` within 1e-5 whatever the scores' offset (up to 1e6),
    scale and batch split, and under DDP equals the single-process result, also with uneven batch counts and
    processes that saw no batch (see :mod:`lightning_classim._streaming` for the numerics).

    Memory: the states take ``8 m^2 + 32 m`` bytes (float64 cross-product, mean, minimum and maximum), plus a
    block buffer of ``4 m^2`` bytes (in the dtype of the scores, float32 unless they are float64): 12 MB for
    m = 1,000, 192 MB for m = 4,000, 1.2 GB for m = 10,000. They do not grow with the number of samples.
    :meth:`compute` needs another ``8 m^2`` bytes while it runs.

    States are not saved in ``state_dict`` (the torchmetrics default: a checkpoint taken mid-epoch would carry
    hundreds of MB for large ``m``); call ``metric.persistent(True)`` to save them.

    Args:
        num_classes: number of classes ``m`` (the width of the scores).
        scores: which values are correlated: ``"logits"`` (the raw outputs, the default), ``"probs"`` (softmax,
            or sigmoid when ``multilabel``) or ``"ranks"`` (each sample's per-class rank 1..m among its m scores,
            ties averaged as ``scipy.stats.rankdata`` does: the paper's Spearman variant; ranks of the logits).
        multilabel: the classifier is multi-label; only changes ``scores="probs"`` to use a sigmoid.
        nan_strategy: ``"error"`` (default): :meth:`compute` raises if any batch held NaN or infinite scores
            (checked there, so that ``update`` does not synchronise with the host); ``"skip"``: rows with a
            non-finite score are left out and counted in :attr:`num_skipped`.
        undefined: classes whose score never varies have no defined correlation; their rows and columns are
            ``0`` with a diagonal of 1 (``"zero"``, default) or ``NaN`` (``"nan"``). Which classes they were is
            in :attr:`constant_classes` after :meth:`compute`, and a warning names them.
        kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``dist_sync_on_step``, ``process_group``).

    Raises:
        ValueError: if ``num_classes`` is not an int > 1 or an option is not one of its choices.

    Example:
        >>> import torch
        >>> from lightning_classim import ClassSimilarity
        >>> _ = torch.manual_seed(0)
        >>> base = torch.randn(600, 1)
        >>> logits = torch.cat([base, base + 0.5 * torch.randn(600, 1), torch.randn(600, 1)], dim=1)
        >>> metric = ClassSimilarity(num_classes=3)
        >>> for batch in logits.split(256):
        ...     metric.update(batch)
        >>> metric.compute().round(decimals=2)
        tensor([[ 1.0000,  0.9000, -0.0600],
                [ 0.9000,  1.0000, -0.0800],
                [-0.0600, -0.0800,  1.0000]])
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False

    stats: Tensor
    vmin: Tensor
    vmax: Tensor
    skipped: Tensor

    #: Rows accumulated in the scores' dtype before they are folded into the float64 state.
    block_rows: ClassVar[int] = 4096
    #: Batches accumulated in the scores' dtype before they are folded (few float32 additions per block).
    block_batches: ClassVar[int] = 32

    def __init__(
        self,
        num_classes: int,
        *,
        scores: ScoresType = "logits",
        multilabel: bool = False,
        nan_strategy: NanStrategy = "error",
        undefined: UndefinedPolicy = "zero",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        num_classes = check_args(num_classes, scores, nan_strategy, undefined)
        if num_classes > DENSE_MAX_CLASSES:
            raise ValueError(
                f"Expected argument `num_classes` to be at most {DENSE_MAX_CLASSES:,} for the dense matrix, but got "
                f"{num_classes:,}: its state would take {12 * num_classes**2 / 1e9:,.0f} GB. For the logits of a "
                "linear head use `HeadSimilarity(num_features=D)` (exact, 8 D^2 bytes whatever the number of "
                "classes), or `ClassSimilarityCallback(head='fc')` in a Trainer; probabilities and ranks have no "
                "such route."
            )
        self.num_classes = num_classes
        self.scores: ScoresType = scores
        self.multilabel = check_bool("multilabel", multilabel)
        self.nan_strategy: NanStrategy = nan_strategy
        self.undefined: UndefinedPolicy = undefined
        reductions: dict[str, Any] = {"stats": merge_stats, "vmin": "min", "vmax": "max", "skipped": "sum"}
        for name, default in new_states(num_classes).items():
            self.add_state(name, default, dist_reduce_fx=reductions[name])
        self._block: Block | None = None
        self._block_open = False
        self._block_len = 0
        self._block_count = 0
        self._warned_forward = False
        #: Indices of the classes whose score never varied, set by :meth:`compute`.
        self.constant_classes: Tensor = torch.zeros(0, dtype=torch.long)
        #: Number of rows left out for non-finite scores (``nan_strategy="skip"``), set by :meth:`compute`.
        self.num_skipped: int = 0

    def update(self, preds: Tensor) -> None:
        """Add one batch of scores.

        Args:
            preds: raw model outputs of one batch, a float tensor of shape ``(N, num_classes)`` (float16,
                bfloat16, float32 or float64; batches of different dtypes may follow each other). Gradients are not
                tracked; updating under ``torch.inference_mode`` and outside it both work.

        Raises:
            TypeError: if ``preds`` is not a floating point tensor.
            ValueError: if ``preds`` is not of shape ``(N, num_classes)``.
        """
        check_preds(preds, self.num_classes)
        if preds.shape[0] == 0:
            return
        if preds.device != self.device:
            self.to(preds.device)
        self._normal_states()
        x = transform_scores(preds, self.scores, self.multilabel)
        if self._block_open and self._block is not None and self._block.s2.dtype != x.dtype:
            self._fold()  # a batch of another dtype starts a new block
        mask = None
        if self.nan_strategy == "skip":
            mask = finite_rows(x)
            self.skipped.add_((~mask).sum())
        fresh = not self._block_open
        self._block, vmin, vmax = update_block(x, self._block, mask, fresh=fresh)
        self._block_open = True
        self._block_len += x.shape[0]
        self._block_count += 1
        torch.minimum(self.vmin, vmin.to(self.vmin.dtype), out=self.vmin)
        torch.maximum(self.vmax, vmax.to(self.vmax.dtype), out=self.vmax)
        if self._block_len >= self.block_rows or self._block_count >= self.block_batches:
            self._fold()

    def compute(self) -> Tensor:
        """Return the ``(num_classes, num_classes)`` similarity matrix (float32).

        Raises:
            ValueError: if fewer than 2 samples (with finite scores) were seen over all processes, if scores were
                non-finite and ``nan_strategy="error"``, or if the matrix came out non-finite (never a silent NaN).
        """
        result = compute_matrix(self.stats, self.vmin, self.vmax, self.undefined)
        self.constant_classes = result.constant.cpu()
        self.num_skipped = int(self.skipped.item())
        warn_undefined(self.constant_classes, self.undefined)
        return result.matrix

    # -- the pending block must be folded into the float64 states before anything reads or merges them --

    def _normal_states(self) -> None:
        """Replace states made under ``torch.inference_mode`` (e.g. by a merge there) with normal tensors."""
        for name in self._defaults:
            value = getattr(self, name)
            if isinstance(value, Tensor) and value.is_inference():
                with torch.inference_mode(False):
                    setattr(self, name, value.clone())

    def _fold(self) -> None:
        if self._block_open and self._block is not None:
            self._normal_states()
            fold_block(self._block, self.stats)
        self._block_open = False
        self._block_len = 0
        self._block_count = 0

    def sync(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102 (documented in torchmetrics)
        self._fold()
        super().sync(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Add a batch and return the similarity of that batch alone (``None``, with a warning, for one row)."""
        self._fold()
        preds = args[0] if args else kwargs.get("preds")
        if isinstance(preds, Tensor) and preds.ndim == 2 and preds.shape[0] < 2:
            if not self._warned_forward:
                self._warned_forward = True
                rank_zero_warn(
                    f"ClassSimilarity.forward got a batch of {preds.shape[0]} row: it is added to the running state, "
                    "but a correlation of one batch needs 2 rows or more, so forward returns None. Use `update` "
                    "for batches of any size.",
                    UserWarning,
                )
            self.update(preds)
            return None
        return super().forward(*args, **kwargs)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Merge another metric's state (or its ``metric_state`` dict) into this one, exactly (Chan's update).

        Raises:
            ValueError: if the other metric counts another number of classes or correlates other scores, or the
                dict's states do not have this metric's shapes.
        """
        self._fold()
        if isinstance(incoming_state, ClassSimilarity):
            mine = (self.num_classes, self.scores, self.multilabel)
            theirs = (incoming_state.num_classes, incoming_state.scores, incoming_state.multilabel)
            if mine != theirs:
                raise ValueError(
                    f"Expected a ClassSimilarity with the same (num_classes, scores, multilabel) to merge, but got "
                    f"{theirs} into {mine}. Only metrics of the same classes and scores can be merged."
                )
            incoming_state = incoming_state.metric_state
        elif isinstance(incoming_state, dict):
            self._check_states(incoming_state, "incoming_state")
            mine_kind = (self.scores, self.multilabel)
            theirs_kind = (incoming_state.get("scores", self.scores), incoming_state.get("multilabel", self.multilabel))
            if theirs_kind != mine_kind:
                raise ValueError(
                    f"Expected argument `incoming_state` to hold the sums of the same scores, but it holds those of "
                    f"(scores, multilabel) = {theirs_kind} and this metric correlates {mine_kind}. Merge only the "
                    "`metric_state` of a metric made with the same `scores` and `multilabel`."
                )
        super().merge_state(incoming_state)

    @property
    def metric_state(self) -> dict[str, Any]:
        """The metric's states (its open block folded in), and what they sum (``scores``, ``multilabel``)."""
        self._fold()
        return {**super().metric_state, "scores": self.scores, "multilabel": self.multilabel}

    def _check_states(self, states: dict[str, Any], name: str) -> None:
        for key, default in self._defaults.items():
            value = states.get(key)
            if not isinstance(value, Tensor) or not isinstance(default, Tensor) or value.shape != default.shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"Expected argument `{name}` to hold the states of a ClassSimilarity over {self.num_classes} "
                    f"classes, but its {key!r} is {got} (expected shape {tuple(getattr(default, 'shape', ()))}). Pass "
                    "`other.metric_state` of a metric with the same `num_classes`."
                )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        states = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if any(k in states for k in self._defaults):
            self._check_states({k: states.get(k) for k in self._defaults}, "state_dict")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]  # noqa: D102
        self._fold()
        return super().state_dict(*args, **kwargs)

    def reset(self) -> None:  # noqa: D102
        with torch.inference_mode(False):
            super().reset()
        self._block_open = False
        self._block_len = 0
        self._block_count = 0

    def _apply(self, fn: Any, exclude_state: Any = "") -> Any:
        self._fold()
        self._block = None
        return super()._apply(fn, exclude_state)
