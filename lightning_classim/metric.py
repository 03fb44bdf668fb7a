"""The streaming class-similarity metric."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

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
    transform_scores,
    update_block,
    warn_undefined,
)
from lightning_classim._validation import check_bool

__all__ = ["ClassSimilarity"]


class ClassSimilarity(Metric):
    r"""Streaming class-similarity matrix: the Pearson correlation of the classes' prediction scores.

    For ``m`` classes, the similarity of classes :math:`j_1` and :math:`j_2` is the Pearson correlation of their
    scores :math:`P_{j_1}` and :math:`P_{j_2}` over all validation samples seen (Alsallakh et al., 2020). No
    labels are needed, so it works for single- and multi-label classifiers alike.

    Each :meth:`update` adds a batch to running sums on the device of the scores with one in-place matrix
    product and makes no host synchronisation; :meth:`compute` returns the ``(m, m)`` matrix. Under DDP the
    states are float64 raw sums whose merge is a plain sum, so the result is exact, also with uneven batch counts
    and processes that saw no batch (see :mod:`lightning_classim.functional` for the numerics).

    Memory: the states take ``8 m^2 + 40 m`` bytes (float64 cross-product, sums, minimum and maximum), plus a
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

    n: Tensor
    s1: Tensor
    s2: Tensor
    vmin: Tensor
    vmax: Tensor
    skipped: Tensor

    #: Rows accumulated in the scores' dtype before they are folded into the float64 sums.
    block_rows: ClassVar[int] = 4096

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
        self.num_classes = num_classes
        self.scores: ScoresType = scores
        self.multilabel = check_bool("multilabel", multilabel)
        self.nan_strategy: NanStrategy = nan_strategy
        self.undefined: UndefinedPolicy = undefined
        m = num_classes
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("s1", torch.zeros(m, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("s2", torch.zeros(m, m, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("vmin", torch.full((m,), float("inf"), dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("vmax", torch.full((m,), float("-inf"), dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("skipped", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self._block: Block | None = None
        self._block_open = False
        self._block_len = 0
        #: Indices of the classes whose score never varied, set by :meth:`compute`.
        self.constant_classes: Tensor = torch.zeros(0, dtype=torch.long)
        #: Number of rows left out for non-finite scores (``nan_strategy="skip"``), set by :meth:`compute`.
        self.num_skipped: int = 0

    def update(self, preds: Tensor) -> None:
        """Add one batch of scores.

        Args:
            preds: raw model outputs of one batch, a float tensor of shape ``(N, num_classes)`` (float16,
                bfloat16, float32 or float64). Gradients are not tracked.

        Raises:
            TypeError: if ``preds`` is not a floating point tensor.
            ValueError: if ``preds`` is not of shape ``(N, num_classes)``.
        """
        check_preds(preds, self.num_classes)
        if preds.shape[0] == 0:
            return
        if preds.device != self.device:
            self.to(preds.device)
        x = transform_scores(preds, self.scores, self.multilabel)
        mask = None
        if self.nan_strategy == "skip":
            mask = finite_rows(x)
            self.skipped += (~mask).sum()
        fresh = not self._block_open
        self._block, vmin, vmax = update_block(x, self._block, mask, fresh=fresh)
        self._block_open = True
        self._block_len += x.shape[0]
        self.vmin = torch.minimum(self.vmin, vmin)
        self.vmax = torch.maximum(self.vmax, vmax)
        if self._block_len >= self.block_rows:
            self._fold()

    def compute(self) -> Tensor:
        """Return the ``(num_classes, num_classes)`` similarity matrix (float32).

        Raises:
            ValueError: if fewer than 2 samples (with finite scores) were seen over all processes, or if scores
                were non-finite and ``nan_strategy="error"``.
        """
        result = compute_matrix(self.n, self.s1, self.s2, self.vmin, self.vmax, self.undefined)
        self.constant_classes = result.constant.cpu()
        self.num_skipped = int(self.skipped.item())
        warn_undefined(self.constant_classes, self.undefined)
        return result.matrix

    # -- the pending block must be folded into the float64 states before anything reads or merges them --

    def _fold(self) -> None:
        if self._block_open and self._block is not None:
            fold_block(self._block, self.n, self.s1, self.s2)
        self._block_open = False
        self._block_len = 0

    def sync(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102 (documented in torchmetrics)
        self._fold()
        super().sync(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        self._fold()
        return super().forward(*args, **kwargs)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:  # noqa: D102
        self._fold()
        if isinstance(incoming_state, ClassSimilarity):
            incoming_state._fold()
        super().merge_state(incoming_state)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]  # noqa: D102
        self._fold()
        return super().state_dict(*args, **kwargs)

    def reset(self) -> None:  # noqa: D102
        super().reset()
        self._block_open = False
        self._block_len = 0

    def _apply(self, fn: Any, exclude_state: Any = "") -> Any:
        self._fold()
        self._block = None
        return super()._apply(fn, exclude_state)
