"""The metrics of the other views of class similarity, to set beside the score-based matrix.

Seeds: Srinivasan; Park; Kim et al.

* :class:`LabelCooccurrence`: how often two labels occur together in multi-hot ground truth, as raw counts or
  normalised by their union (IoU), the label-tree input of the extreme-classification seed.
* :class:`ClassFeatureSimilarity`: per-class statistics of a layer's features (the penultimate layer, or a
  convolutional layer reduced by global average pooling), compared by cosine similarity: the class means
  (``statistic="mean"``), or the per-channel Welch t statistics of each class against all other samples
  (``statistic="welch"``; the Park seed's "Welch's t-test on per-class channel statistics", read one-vs-rest).
* :func:`weight_similarity`: cosine similarity of classifier weight rows or class proxies; needs no data.
* :func:`confusion_similarity`: a symmetric similarity from a confusion matrix (for the paper's baseline).

Every metric keeps float64 sums whose cross-process merge is a plain sum, so the DDP result is exact.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_classim._streaming import warn_undefined
from lightning_classim._validation import check_choice, check_int, check_num_classes

__all__ = [
    "ClassFeatureSimilarity",
    "LabelCooccurrence",
    "confusion_similarity",
    "cosine_similarity_matrix",
    "weight_similarity",
]

CooccurrenceNorm = Literal["iou", "none"]
FeatureStatistic = Literal["mean", "welch"]


def _targets_to_multihot(target: Tensor, num_classes: int, name: str = "target") -> Tensor:
    """Class indices (N,) or multi-hot (N, m) -> float64 multi-hot (N, m)."""
    if not isinstance(target, Tensor):
        raise TypeError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(target).__name__}.")
    if target.ndim == 1:
        if target.is_floating_point():
            raise TypeError(
                f"Expected argument `{name}` of shape (N,) to hold integer class indices, but got dtype "
                f"{target.dtype}. Pass class indices, or multi-hot targets of shape (N, {num_classes})."
            )
        return nn.functional.one_hot(target.long(), num_classes).to(torch.float64)
    if target.ndim == 2 and target.shape[1] == num_classes:
        return (target > 0).to(torch.float64) if target.dtype != torch.bool else target.to(torch.float64)
    raise ValueError(
        f"Expected argument `{name}` to be class indices (N,) or multi-hot labels (N, {num_classes}), but got shape "
        f"{tuple(target.shape)}."
    )


def cosine_similarity_matrix(vectors: Tensor, undefined: Literal["zero", "nan"] = "zero") -> tuple[Tensor, Tensor]:
    """Cosine similarity between the rows of ``vectors`` (m, d).

    Rows of zero length have no defined similarity: their rows and columns are 0 (diagonal 1) or NaN.

    Returns:
        The ``(m, m)`` float32 matrix and the indices of the zero rows.
    """
    v = vectors.to(torch.float64)
    norms = v.norm(dim=1)
    zero = norms == 0
    unit = v / torch.where(zero, torch.ones_like(norms), norms)[:, None]
    sim = (unit @ unit.T).clamp_(-1.0, 1.0)
    fill = float("nan") if undefined == "nan" else 0.0
    sim[zero, :] = fill
    sim[:, zero] = fill
    sim.fill_diagonal_(1.0)
    return sim.to(torch.float32), zero.nonzero().flatten()


def weight_similarity(weight: Tensor | nn.Module, num_classes: int | None = None) -> Tensor:
    """Cosine similarity of classifier weight rows, or of class proxies/prototypes given as a tensor (Kim et al.).

    Args:
        weight: an ``(m, d)`` tensor, or a module with such a ``weight`` (e.g. the final ``nn.Linear``).
        num_classes: the expected number of rows, checked when given.

    Returns:
        The ``(m, m)`` float32 similarity matrix.

    Raises:
        ValueError: if the weight is not 2-d or has a number of rows other than ``num_classes``.

    Example:
        >>> import torch
        >>> weight_similarity(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])).round(decimals=3)
        tensor([[1.0000, 0.7070, 0.0000],
                [0.7070, 1.0000, 0.7070],
                [0.0000, 0.7070, 1.0000]])
    """
    w = weight.weight if isinstance(weight, nn.Module) else weight
    if not isinstance(w, Tensor) or w.ndim != 2:
        got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"Expected a weight matrix of shape (num_classes, features), but got {got}.")
    if num_classes is not None and w.shape[0] != num_classes:
        raise ValueError(
            f"Expected the weight matrix to have one row per class ({num_classes}), but got shape {tuple(w.shape)}. "
            "Name the final classification layer, whose output width is the number of classes."
        )
    sim, zero = cosine_similarity_matrix(w.detach())
    warn_undefined(zero.cpu(), "zero", "had an all-zero weight row", "weight_similarity")
    return sim


def confusion_similarity(confusion: Tensor) -> Tensor:
    """A symmetric similarity from a confusion matrix (rows: true class, columns: predicted class).

    Row-normalised confusion rates ``R`` (the share of class i predicted as j), symmetrised ``(R + R^T) / 2``,
    diagonal 1. Classes with no sample have rate 0.

    Example:
        >>> confusion_similarity(torch.tensor([[8, 2], [0, 10]]))
        tensor([[1.0000, 0.1000],
                [0.1000, 1.0000]])
    """
    c = confusion.to(torch.float64)
    rows = c.sum(dim=1, keepdim=True)
    rates = c / torch.where(rows > 0, rows, torch.ones_like(rows))
    sim = 0.5 * (rates + rates.T)
    sim.fill_diagonal_(1.0)
    return sim.to(torch.float32)


class LabelCooccurrence(Metric):
    r"""Label co-occurrence of multi-hot ground truth, streamed (Srinivasan et al.).

    ``normalize="none"`` returns the counts :math:`C_{ij}` of samples that carry both labels i and j (the diagonal
    is each label's count); ``"iou"`` divides by the union, :math:`C_{ij} / (C_{ii} + C_{jj} - C_{ij})`, so the
    result is in [0, 1] with diagonal 1 (0 for a label that never occurs).

    Args:
        num_classes: number of labels.
        normalize: ``"iou"`` (default) or ``"none"``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = LabelCooccurrence(3)
        >>> metric.update(torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]]))
        >>> metric.compute()
        tensor([[1.0000, 0.6667, 0.3333],
                [0.6667, 1.0000, 0.5000],
                [0.3333, 0.5000, 1.0000]])
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False
    counts: Tensor

    def __init__(self, num_classes: int, *, normalize: CooccurrenceNorm = "iou", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        num_classes = check_num_classes(num_classes)
        check_choice("normalize", normalize, CooccurrenceNorm)
        self.num_classes = num_classes
        self.normalize: CooccurrenceNorm = normalize
        self.add_state("counts", torch.zeros(num_classes, num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target: Tensor) -> None:
        """Add a batch of targets: multi-hot ``(N, m)`` (0/1, bool or float) or class indices ``(N,)``."""
        y = _targets_to_multihot(target, self.num_classes)
        if y.device != self.counts.device:
            self.to(y.device)
        # counts are integers below 2^53: float64 sums are exact, and the merge across processes is a plain sum
        self.counts.add_(y.T.to(torch.float32) @ y.to(torch.float32))

    def compute(self) -> Tensor:
        """The ``(m, m)`` co-occurrence counts, or IoU (float32)."""
        c = self.counts
        if self.normalize == "none":
            return c.to(torch.float32)
        diag = c.diagonal()
        union = diag[:, None] + diag[None, :] - c
        iou = torch.where(union > 0, c / torch.where(union > 0, union, torch.ones_like(union)), torch.zeros_like(c))
        iou.fill_diagonal_(1.0)
        return iou.to(torch.float32)


class ClassFeatureSimilarity(Metric):
    r"""Per-class statistics of a layer's features, compared by cosine similarity (Park et al.).

    ``statistic="mean"``: the mean feature vector of each class. ``statistic="welch"``: for each class c and
    channel k, Welch's t statistic of the class's values against all other samples' values,
    :math:`t = (\bar x_{in} - \bar x_{out}) / \sqrt{s^2_{in}/n_{in} + s^2_{out}/n_{out}}` (unbiased variances, as
    ``scipy.stats.ttest_ind(..., equal_var=False)``). The Park seed is terse about the comparison; this
    one-vs-rest reading is our choice. Features of shape ``(N, C, H, W)`` (or any ``(N, C, ...)``) are reduced by
    global average pooling first. With multi-hot targets a sample counts for every label it carries.

    States: per-class counts, sums (and sums of squares for Welch), float64, ``(m, d)``; totals ``(d,)``.

    Args:
        num_classes: number of classes.
        num_features: number of feature channels ``d``.
        statistic: ``"mean"`` or ``"welch"``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = ClassFeatureSimilarity(3, num_features=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.9, 1.1]]), torch.tensor([0, 1, 2, 2]))
        >>> metric.compute().round(decimals=3)
        tensor([[1.0000, 0.9990, 0.3940],
                [0.9990, 1.0000, 0.4390],
                [0.3940, 0.4390, 1.0000]])
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False
    count: Tensor
    s1: Tensor
    s2: Tensor
    total_n: Tensor
    t1: Tensor
    t2: Tensor

    def __init__(
        self, num_classes: int, num_features: int, *, statistic: FeatureStatistic = "mean", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        num_classes = check_num_classes(num_classes)
        num_features = check_int("num_features", num_features, 1, "Pass the width of the hooked layer's output.")
        check_choice("statistic", statistic, FeatureStatistic)
        self.num_classes, self.num_features = num_classes, num_features
        self.statistic: FeatureStatistic = statistic
        m, d = num_classes, num_features
        f64 = torch.float64
        self.add_state("count", torch.zeros(m, dtype=f64), dist_reduce_fx="sum")
        self.add_state("s1", torch.zeros(m, d, dtype=f64), dist_reduce_fx="sum")
        self.add_state("s2", torch.zeros(m, d, dtype=f64), dist_reduce_fx="sum")
        self.add_state("total_n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("t1", torch.zeros(d, dtype=f64), dist_reduce_fx="sum")
        self.add_state("t2", torch.zeros(d, dtype=f64), dist_reduce_fx="sum")
        #: The per-class statistic vectors (means or t values), ``(m, d)``, set by :meth:`compute`.
        self.class_statistics: Tensor = torch.zeros(0)
        #: Classes with no sample (or an all-zero statistic), set by :meth:`compute`.
        self.undefined_classes: Tensor = torch.zeros(0, dtype=torch.long)

    def update(self, features: Tensor, target: Tensor) -> None:
        """Add a batch: ``features`` ``(N, d)`` or ``(N, d, ...)`` (pooled), ``target`` indices or multi-hot.

        Raises:
            ValueError: if the shapes do not match ``num_features`` or the batch size of ``target``.
        """
        if not isinstance(features, Tensor) or not features.is_floating_point():
            raise TypeError("Expected argument `features` to be a floating point tensor.")
        x = features.detach()
        if x.ndim > 2:
            x = x.flatten(2).mean(dim=2)  # global average pooling
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"Expected argument `features` to have num_features={self.num_features} channels, but got shape "
                f"{tuple(features.shape)}. Set `num_features` to the hooked layer's output channels."
            )
        y = _targets_to_multihot(target, self.num_classes)
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"Expected `features` and `target` to hold the same samples, but got {x.shape[0]} and {y.shape[0]}."
            )
        if x.device != self.s1.device:
            self.to(x.device)
        x = x.to(torch.float64)
        y = y.to(x.device)
        self.count.add_(y.sum(dim=0))
        self.s1.addmm_(y.T, x)
        self.total_n.add_(x.shape[0])
        self.t1.add_(x.sum(dim=0))
        if self.statistic == "welch":
            sq = x * x
            self.s2.addmm_(y.T, sq)
            self.t2.add_(sq.sum(dim=0))

    def _statistics(self) -> Tensor:
        n_in = self.count[:, None]
        safe = torch.where(n_in > 0, n_in, torch.ones_like(n_in))
        mean_in = self.s1 / safe
        if self.statistic == "mean":
            return torch.where(n_in > 0, mean_in, torch.zeros_like(mean_in))
        n_out = self.total_n - n_in
        s1_out = self.t1[None, :] - self.s1
        s2_out = self.t2[None, :] - self.s2
        safe_out = torch.where(n_out > 0, n_out, torch.ones_like(n_out))
        mean_out = s1_out / safe_out
        var_in = (self.s2 - n_in * mean_in**2).clamp(min=0) / (n_in - 1).clamp(min=1)
        var_out = (s2_out - n_out * mean_out**2).clamp(min=0) / (n_out - 1).clamp(min=1)
        se = torch.sqrt(var_in / safe + var_out / safe_out)
        t = (mean_in - mean_out) / torch.where(se > 0, se, torch.ones_like(se))
        ok = (n_in > 1) & (n_out > 1) & (se > 0)
        return torch.where(ok, t, torch.zeros_like(t))

    def compute(self) -> Tensor:
        """The ``(m, m)`` cosine similarity of the classes' statistic vectors (float32).

        Classes without samples (fewer than 2 for Welch) get row and column 0, are listed in
        :attr:`undefined_classes`, and a warning names them.
        """
        stats = self._statistics()
        self.class_statistics = stats
        sim, zero = cosine_similarity_matrix(stats)
        self.undefined_classes = zero.cpu()
        warn_undefined(
            self.undefined_classes,
            "zero",
            "had no samples (fewer than 2 for `statistic='welch'`) or an all-zero statistic vector",
            "ClassFeatureSimilarity.undefined_classes",
        )
        return sim
