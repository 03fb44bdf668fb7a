"""The pure functions of the streaming class similarity, shared by the metric and the functional form.

:class:`~lightning_classim.ClassSimilarity` and :func:`~lightning_classim.functional.class_similarity` share them
(the torchmetrics layout: ``update`` returns increments of the state, ``compute`` turns the state into the result).

The class similarity of the paper (Alsallakh et al., 2020) is the Pearson correlation between the classes'
prediction scores over the samples. It streams from three sums: the number of samples ``n``, the per-class sum
``S1 = sum(x)`` and the cross-product sum ``S2 = sum(x x^T)``.

Numerics. Summing raw float32 logits that carry a large common offset loses everything (error ~0.1 in ``r`` for
an offset of 1000). We therefore accumulate a *block* of batches in the scores' dtype (float32 for float32,
float16 and bfloat16 inputs), shifted by a per-class reference ``K`` (the mean of the block's first batch), with an
in-place ``addmm_``; every few thousand rows, and before any cross-process synchronisation, the block is folded
into float64 *raw* sums::

    S1 += s1 + nb K
    S2 += s2 + s1 K^T + K s1^T + nb K K^T

Raw float64 sums from every process merge by a plain sum, so the distributed result is exact (not an
approximation of a pairwise merge). The final centring ``S2 - S1 S1^T / n`` is done in float64; its relative
error is about ``1e-16 (|mean| / std)^2``, i.e. 1e-10 for logits offset by 1000 with unit spread.

Classes whose score never varies have no defined correlation. They are detected exactly from per-class minimum
and maximum (a class is constant when its minimum equals its maximum) and, by default, get row and column 0 with a
diagonal of 1 (``undefined="zero"``) or NaN (``undefined="nan"``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from lightning_classim._validation import check_choice, check_num_classes

ScoresType = Literal["logits", "probs", "ranks"]
NanStrategy = Literal["error", "skip"]
UndefinedPolicy = Literal["zero", "nan"]

__all__ = [
    "Block",
    "NanStrategy",
    "ScoresType",
    "UndefinedPolicy",
    "average_ranks",
    "block_start",
    "check_args",
    "check_preds",
    "compute_matrix",
    "finite_rows",
    "fold_block",
    "new_states",
    "transform_scores",
    "update_block",
    "warn_undefined",
]


def check_args(num_classes: object, scores: object, nan_strategy: object, undefined: object) -> int:
    """Check the metric's options; return ``num_classes`` as an int."""
    number = check_num_classes(num_classes)
    check_choice("scores", scores, ScoresType)
    check_choice("nan_strategy", nan_strategy, NanStrategy)
    check_choice("undefined", undefined, UndefinedPolicy)
    return number


def check_preds(preds: object, num_classes: int | None) -> None:
    if not isinstance(preds, Tensor):
        raise TypeError(f"Expected argument `preds` to be a torch.Tensor, but got {type(preds).__name__}.")
    if preds.ndim != 2:
        raise ValueError(
            f"Expected argument `preds` to have 2 dimensions (batch, num_classes), but got {preds.ndim} dimensions "
            f"with shape {tuple(preds.shape)}. Reshape the scores to (N, num_classes), e.g. `preds.flatten(0, -2)`."
        )
    if not preds.is_floating_point():
        raise TypeError(
            f"Expected argument `preds` to be a floating point tensor of scores, but got dtype {preds.dtype}. "
            "Pass the raw model outputs (logits), not predicted class indices or labels."
        )
    if preds.shape[1] < 2:
        raise ValueError(
            f"Expected argument `preds` to have at least 2 class columns, but got shape {tuple(preds.shape)}. "
            "A class similarity needs two classes or more."
        )
    if num_classes is not None and preds.shape[1] != num_classes:
        raise ValueError(
            f"Expected argument `preds` to have num_classes={num_classes} columns, but got shape "
            f"{tuple(preds.shape)}. Check `num_classes` or pass the classifier's output for all classes."
        )


def average_ranks(x: Tensor) -> Tensor:
    """Rank each row's values 1..m, ties getting their average rank (as ``scipy.stats.rankdata``).

    One sort per row; a tie run spanning sorted positions ``a..b`` gets ``(a + b) / 2 + 1``, found with a running
    maximum of run starts and a reversed running minimum of run ends (no host synchronisation).
    """
    values, index = x.sort(dim=1)
    m = x.shape[1]
    pos = torch.arange(m, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(dim=1).values
    last = torch.where(ends, pos, m).flip(1).cummin(dim=1).values.flip(1)
    ranks_sorted = (first + last + 2).to(x.dtype) * 0.5
    return torch.empty_like(x).scatter_(1, index, ranks_sorted)


def transform_scores(preds: Tensor, scores: ScoresType, multilabel: bool) -> Tensor:
    """Turn raw model outputs into the values whose correlation is measured (float32 or float64)."""
    x = preds.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if scores == "probs":
        x = torch.sigmoid(x) if multilabel else torch.softmax(x, dim=1)
    elif scores == "ranks":
        x = average_ranks(x)
    return x


class Block(NamedTuple):
    """Shifted sums of the batches of one block, in the dtype of the scores."""

    s1: Tensor  # (m,) sum of (x - K)
    s2: Tensor  # (m, m) sum of (x - K)(x - K)^T
    shift: Tensor  # (m,) K
    n: Tensor  # () number of rows in the block (float64)


def finite_rows(x: Tensor) -> Tensor:
    return torch.isfinite(x).all(dim=1)


def block_start(x: Tensor, mask: Tensor | None, reuse: Block | None = None) -> Block:
    """Open a new block from its first batch: the shift is the batch's (masked) mean.

    ``reuse`` hands over the buffers of a folded block of the same shape, so that no (m, m) buffer is allocated
    per block.
    """
    m = x.shape[1]
    if mask is None:
        shift = x.mean(dim=0)
    else:
        shift = torch.where(mask[:, None], x, 0).sum(dim=0) / mask.sum().clamp(min=1)
    n = torch.zeros((), dtype=torch.float64, device=x.device)
    if reuse is not None and reuse.s2.dtype == x.dtype and reuse.s2.device == x.device:
        return Block(reuse.s1.zero_(), reuse.s2, shift, n)
    s1 = torch.zeros(m, dtype=x.dtype, device=x.device)
    s2 = torch.empty(m, m, dtype=x.dtype, device=x.device)
    return Block(s1, s2, shift, n)


def update_block(x: Tensor, block: Block | None, mask: Tensor | None, fresh: bool) -> tuple[Block, Tensor, Tensor]:
    """Add one batch of transformed scores to a block.

    Args:
        x: transformed scores (N, m), float32 or float64.
        block: the open block; with ``fresh``, a folded block whose buffers are reused, or ``None``.
        mask: rows to keep (``nan_strategy="skip"``), or ``None`` to keep all rows.
        fresh: open a new block from this batch (its sums are overwritten, not added to).

    Returns:
        The block, and the batch's per-class minimum and maximum (for the detection of constant classes).
    """
    if fresh or block is None:
        block, fresh = block_start(x, mask, reuse=block), True
    if mask is not None:
        # rows with non-finite scores become K: they add nothing to the shifted sums and stay within [min, max]
        x = torch.where(mask[:, None], x, block.shift)
        block.n.add_(mask.sum())
    else:
        block.n.add_(x.shape[0])
    y = x - block.shift
    block.s2.addmm_(y.T, y, beta=0.0 if fresh else 1.0)
    block.s1.add_(y.sum(dim=0))
    vmin, vmax = torch.aminmax(x, dim=0)
    return block, vmin, vmax


def fold_block(block: Block, n: Tensor, s1: Tensor, s2: Tensor) -> None:
    """Fold a block's shifted sums into the float64 raw sums ``n``, ``S1``, ``S2`` (in place)."""
    k = block.shift.to(torch.float64)
    b1 = block.s1.to(torch.float64)
    s2.add_(block.s2)
    half = b1 + (0.5 * block.n) * k
    s2.addr_(half, k)
    s2.addr_(k, half)
    s1.add_(b1).add_(block.n * k)
    n.add_(block.n)


class Result(NamedTuple):
    matrix: Tensor
    constant: Tensor  # indices of classes whose score never varied


def compute_matrix(
    n: Tensor,
    s1: Tensor,
    s2: Tensor,
    vmin: Tensor,
    vmax: Tensor,
    undefined: UndefinedPolicy = "zero",
    out_dtype: torch.dtype = torch.float32,
) -> Result:
    """Turn the float64 raw sums into the (m, m) Pearson correlation matrix."""
    num = int(n.item())
    if num < 2:
        raise ValueError(
            f"Expected at least 2 samples with finite scores to compute a correlation, but got {num}. "
            "Call `update` with more validation batches before `compute`."
        )
    if not bool(torch.isfinite(s1).all()):
        raise ValueError(
            "Expected argument `preds` to hold only finite scores, but some batches contained NaN or infinite "
            "values. Fix the model's outputs, or pass `nan_strategy='skip'` to leave those rows out."
        )
    cov = s2.clone()
    cov.addr_(s1, s1, alpha=-1.0 / num)  # n * covariance
    var = cov.diagonal().clone()
    constant = (vmin == vmax) | (var <= 0)
    std = torch.where(constant, torch.ones_like(var), var.clamp(min=0).sqrt())
    cov.div_(std[:, None]).div_(std[None, :])
    cov.clamp_(-1.0, 1.0)
    fill = float("nan") if undefined == "nan" else 0.0
    if bool(constant.any()):
        cov[constant, :] = fill
        cov[:, constant] = fill
    cov.fill_diagonal_(1.0)
    if undefined == "nan" and bool(constant.any()):
        idx = constant.nonzero().flatten()
        cov[idx, idx] = float("nan")
    return Result(cov.to(out_dtype), constant.nonzero().flatten())


def warn_undefined(
    constant: Tensor,
    undefined: UndefinedPolicy,
    reason: str = "had a constant score over all samples",
    see: str = "ClassSimilarity.constant_classes",
) -> None:
    """Name the classes whose similarity is undefined, and why (on rank 0 only)."""
    if len(constant) == 0:
        return
    shown = constant[:20].tolist()
    more = "" if len(constant) <= 20 else f" and {len(constant) - 20} more"
    rank_zero_warn(
        f"{len(constant)} classes {reason}, so their similarity is undefined and "
        f"set to {'NaN' if undefined == 'nan' else '0'}: {shown}{more}. See `{see}`.",
        UserWarning,
    )


def new_states(m: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
    return {
        "n": torch.zeros((), dtype=torch.float64, device=device),
        "s1": torch.zeros(m, dtype=torch.float64, device=device),
        "s2": torch.zeros(m, m, dtype=torch.float64, device=device),
        "vmin": torch.full((m,), float("inf"), dtype=torch.float64, device=device),
        "vmax": torch.full((m,), float("-inf"), dtype=torch.float64, device=device),
        "skipped": torch.zeros((), dtype=torch.int64, device=device),
    }
