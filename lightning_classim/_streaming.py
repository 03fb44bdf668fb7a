"""The pure functions of the streaming class similarity, shared by the metric and the functional form.

:class:`~lightning_classim.ClassSimilarity` and :func:`~lightning_classim.functional.class_similarity` share them
(the torchmetrics layout: ``update`` returns increments of the state, ``compute`` turns the state into the result).

The class similarity of the paper (Alsallakh et al., 2020) is the Pearson correlation between the classes'
prediction scores over the samples.

Numerics. The state is the count ``n``, the per-class mean and the centred cross-product sum
``M2 = sum (x - mean)(x - mean)^T``, in float64, packed in one vector (:func:`new_stats`). Batches are accumulated in a
*block* in the scores' dtype (float32 for float32, float16 and bfloat16 inputs; float64 for float64), each row taken
as ``z = (x - K) / c`` with a per-class shift ``K`` (the mean of the block's first batch) and a per-class scale ``c``
(the power of two nearest below the first batch's largest ``|x - K|``), with one in-place ``addmm_``. Every
4,096 rows or 32 batches, and before any cross-process merge, the block is folded into the state by Chan's
pairwise update, in float64::

    M2 += c c^T * (B2 - b1 b1^T / nb) + (n nb / (n + nb)) d d^T,    d = mean_b - mean,    mean += d nb / (n + nb)

so no sum ever carries the scores' common offset (an offset of 1e6 costs nothing), the float32 products stay near 1
whatever the scores' scale (1e-30 or 1e20 neither underflow nor overflow), and few float32 additions pile up in a
block whatever the batch size. Processes merge their states with the same update (:func:`merge_stats`, the states'
``dist_reduce_fx``), so the distributed result is the single-process one.

Classes whose score never varies have no defined correlation. They are detected exactly from per-class minimum
and maximum (a class is constant when its minimum equals its maximum) and, by default, get row and column 0 with a
diagonal of 1 (``undefined="zero"``) or NaN (``undefined="nan"``). No other entry is ever NaN: a non-finite result
raises.
"""

from __future__ import annotations

import math
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
    "merge_stats",
    "new_states",
    "new_stats",
    "transform_scores",
    "unpack",
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
    """Turn raw model outputs into the values whose correlation is measured (float32 or float64).

    Rows with a non-finite score stay non-finite (a rank of NaN would be a number), so that ``nan_strategy`` sees
    them whatever ``scores`` is.
    """
    x = preds.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if scores == "probs":
        x = torch.sigmoid(x) if multilabel else torch.softmax(x, dim=1)
    elif scores == "ranks":
        finite = finite_rows(x)
        x = torch.where(finite[:, None], average_ranks(x), float("nan"))
    return x


def finite_rows(x: Tensor) -> Tensor:
    """Whether each row holds only finite values."""
    return torch.isfinite(x).all(dim=1)


class Block(NamedTuple):
    """Sums of the batches of one block, in the dtype of the scores, of ``z = (x - shift) / scale``."""

    s1: Tensor  # (m,) sum of z
    s2: Tensor  # (m, m) sum of z z^T
    shift: Tensor  # (m,) K
    scale: Tensor  # (m,) c, powers of two
    n: Tensor  # () number of rows in the block (float64)
    inverse: Tensor  # (m,) 1 / c
    offset: Tensor  # (m,) -K / c: z = x / c - K / c, exactly (c is a power of two)


def block_start(x: Tensor, mask: Tensor | None, reuse: Block | None = None) -> Block:
    """Open a new block from its first batch: its (masked) mean is the shift, a power of two its scale.

    ``reuse`` hands over the buffers of a folded block of the same shape and dtype, so that no ``(m, m)`` buffer is
    allocated per block. The buffers are never inference tensors, so that a block opened under
    ``torch.inference_mode`` can be updated outside it.
    """
    m = x.shape[1]
    with torch.inference_mode(False):
        if mask is None:
            shift = x.mean(dim=0)
            spread = (x - shift).abs().amax(dim=0)
        else:
            keep = mask[:, None]
            shift = torch.where(keep, x, 0).sum(dim=0) / mask.sum().clamp(min=1)
            spread = torch.where(keep, (x - shift).abs(), 0).amax(dim=0)
        usable = torch.isfinite(spread) & (spread > 0)
        power = torch.exp2(torch.floor(torch.log2(torch.where(usable, spread, 1))))
        # at least the smallest normal number, so that 1 / scale is finite for a subnormal spread (scores ~1e-40)
        scale = torch.where(usable, power.clamp(min=torch.finfo(x.dtype).tiny), 1)
        n = torch.zeros((), dtype=torch.float64, device=x.device)
        inverse = scale.reciprocal()
        offset = shift * -inverse
        if reuse is not None and reuse.s2.dtype == x.dtype and reuse.s2.device == x.device:
            return Block(reuse.s1.zero_(), reuse.s2, shift.clone(), scale.clone(), n, inverse, offset)
        s1 = torch.zeros(m, dtype=x.dtype, device=x.device)
        s2 = torch.empty(m, m, dtype=x.dtype, device=x.device)
        return Block(s1, s2, shift.clone(), scale.clone(), n, inverse, offset)


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
        # rows with non-finite scores become K: they add nothing to the sums and stay within [min, max]
        x = torch.where(mask[:, None], x, block.shift)
        block.n.add_(mask.sum())
    else:
        block.n.add_(x.shape[0])
    z = torch.addcmul(block.offset, x, block.inverse)  # (x - K) / c, in one fused pass
    block.s2.addmm_(z.T, z, beta=0.0 if fresh else 1.0)
    block.s1.add_(z.sum(dim=0))
    vmin, vmax = torch.aminmax(x, dim=0)
    return block, vmin, vmax


def new_stats(m: int, device: torch.device | str | None = None) -> Tensor:
    """The empty state: ``[n, mean (m), M2 (m * m)]`` in one float64 vector (one state, merged as a whole)."""
    with torch.inference_mode(False):
        return torch.zeros(1 + m + m * m, dtype=torch.float64, device=device)


def unpack(stats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Views of the count ``n`` (0-d), the mean ``(m,)`` and ``M2`` ``(m, m)`` of a state vector."""
    m = math.isqrt(stats.shape[-1] - 1)  # 1 + m + m^2 = (m + 1/2)^2 + 3/4
    return stats[..., 0], stats[..., 1 : 1 + m], stats[..., 1 + m :].unflatten(-1, (m, m))


def _chan_step(stats: Tensor, n_b: Tensor, mean_b: Tensor) -> None:
    """Merge a count and mean into ``stats`` (in place), adding the between-means term to ``M2``.

    ``M2`` of the incoming part is added by the caller. No host synchronisation: empty parts give weight 0.
    """
    n_a, mean_a, m2 = unpack(stats)
    total = n_a + n_b
    delta = mean_b - mean_a
    weight = n_a * n_b / total.clamp(min=1)
    m2.addr_(delta * weight, delta)
    mean_a.add_(delta * (n_b / total.clamp(min=1)))
    n_a.copy_(total)


#: Rows of the block's cross-product sum converted to float64 at a time in :func:`fold_block` (about 16 MB).
_FOLD_ELEMENTS = 1 << 21


def fold_block(block: Block, stats: Tensor) -> None:
    """Fold a block into the float64 state ``[n, mean, M2]`` by Chan's pairwise update (in place)."""
    with torch.inference_mode(False):
        nb = block.n
        shift, scale = block.shift.to(torch.float64), block.scale.to(torch.float64)
        mean_z = block.s1.to(torch.float64) / nb.clamp(min=1)
        _, _, m2 = unpack(stats)
        m = m2.shape[0]
        step = max(1, _FOLD_ELEMENTS // m)
        for lo in range(0, m, step):  # M2 += c c^T * (B2 - nb mean_z mean_z^T), a slab of rows at a time
            hi = min(lo + step, m)
            slab = block.s2[lo:hi].to(torch.float64, copy=True)
            slab.addr_(mean_z[lo:hi] * nb, mean_z, alpha=-1.0)
            slab.mul_(scale[lo:hi, None]).mul_(scale[None, :])
            m2[lo:hi].add_(slab)
        _chan_step(stats, nb, shift + scale * mean_z)


def merge_stats(stacked: Tensor) -> Tensor:
    """Chan's merge of stacked states ``(k, 1 + m + m^2)`` into one (the states' ``dist_reduce_fx``)."""
    with torch.inference_mode(False):
        out = stacked[0].clone()
        for part in stacked[1:]:
            n_b, mean_b, m2_b = unpack(part)
            unpack(out)[2].add_(m2_b)
            _chan_step(out, n_b, mean_b)
        return out


class Result(NamedTuple):
    """The similarity matrix, and the classes whose similarity is undefined."""

    matrix: Tensor
    constant: Tensor  # indices of classes whose score never varied


def compute_matrix(
    stats: Tensor,
    vmin: Tensor,
    vmax: Tensor,
    undefined: UndefinedPolicy = "zero",
    out_dtype: torch.dtype = torch.float32,
) -> Result:
    """Turn the state ``[n, mean, M2]`` into the (m, m) Pearson correlation matrix.

    Raises:
        ValueError: with fewer than 2 samples, non-finite scores, or a matrix that came out non-finite (scores so
            large that their squares overflow float64).
    """
    n, mean, m2 = unpack(stats)
    num = int(n.item())
    if num < 2:
        raise ValueError(
            f"Expected at least 2 samples with finite scores to compute a correlation, but got {num}. "
            "Call `update` with more validation batches before `compute`."
        )
    if not bool(torch.isfinite(mean).all()):
        raise ValueError(
            "Expected argument `preds` to hold only finite scores, but some batches contained NaN or infinite "
            "values. Fix the model's outputs, or pass `nan_strategy='skip'` to leave those rows out."
        )
    cov = m2.clone()  # n * covariance
    var = cov.diagonal().clone()
    constant = (vmin == vmax) | ~(var > 0)
    std = torch.where(constant, torch.ones_like(var), var.clamp(min=0).sqrt())
    cov.div_(std[:, None]).div_(std[None, :])
    if not bool(torch.isfinite(cov).all()):
        raise ValueError(
            "The class similarity came out non-finite: the scores' spread is too large for float64 (squares above "
            "1e308). Rescale the scores (e.g. divide the logits by a constant: the correlation does not change)."
        )
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
    """The metric's states, empty."""
    with torch.inference_mode(False):
        return {
            "stats": new_stats(m, device),
            "vmin": torch.full((m,), float("inf"), dtype=torch.float64, device=device),
            "vmax": torch.full((m,), float("-inf"), dtype=torch.float64, device=device),
            "skipped": torch.zeros((), dtype=torch.int64, device=device),
        }
