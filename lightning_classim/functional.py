"""Functional interface: the class similarity of one tensor of scores (the one-shot form of ``ClassSimilarity``).

The numerics are described in :mod:`lightning_classim._streaming`, which both forms share.
"""

from __future__ import annotations

from torch import Tensor

from lightning_classim._streaming import (
    NanStrategy,
    ScoresType,
    UndefinedPolicy,
    check_args,
    check_preds,
    compute_matrix,
    finite_rows,
    fold_block,
    new_stats,
    transform_scores,
    update_block,
    warn_undefined,
)

__all__ = ["NanStrategy", "ScoresType", "UndefinedPolicy", "class_similarity"]


def class_similarity(
    preds: Tensor,
    *,
    scores: ScoresType = "logits",
    multilabel: bool = False,
    nan_strategy: NanStrategy = "error",
    undefined: UndefinedPolicy = "zero",
) -> Tensor:
    """Class-similarity matrix of one tensor of prediction scores (Alsallakh et al., 2020).

    The similarity of classes ``j1`` and ``j2`` is the Pearson correlation of their scores over the samples.
    This is the one-shot form of :class:`~lightning_classim.ClassSimilarity` and shares its code.

    Args:
        preds: raw model outputs, a float tensor of shape ``(N, m)``.
        scores: ``"logits"`` (the scores as given), ``"probs"`` (softmax, or sigmoid when ``multilabel``) or
            ``"ranks"`` (each sample's per-class rank 1..m, ties averaged: the paper's Spearman variant).
        multilabel: use a sigmoid instead of a softmax for ``scores="probs"``.
        nan_strategy: ``"error"`` raises on non-finite scores; ``"skip"`` leaves those rows out.
        undefined: value of the rows and columns of classes whose score never varies: ``"zero"`` (diagonal 1)
            or ``"nan"``.

    Returns:
        The ``(m, m)`` similarity matrix (float32, on the device of ``preds``): symmetric, diagonal 1,
        values in ``[-1, 1]``.

    Raises:
        TypeError: if ``preds`` is not a floating point tensor.
        ValueError: if ``preds`` is not 2-d, has fewer than 2 (finite) rows or fewer than 2 columns, holds
            non-finite values with ``nan_strategy="error"``, or an option is unknown.

    Example:
        >>> import torch
        >>> from lightning_classim.functional import class_similarity
        >>> preds = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.4, 1.0], [1.0, 0.8, 0.0], [-1.0, -0.9, 2.0]])
        >>> class_similarity(preds).round(decimals=3)
        tensor([[ 1.0000,  0.9640, -0.9810],
                [ 0.9640,  1.0000, -0.9220],
                [-0.9810, -0.9220,  1.0000]])
    """
    check_preds(preds, None)
    check_args(preds.shape[1], scores, nan_strategy, undefined)
    x = transform_scores(preds, scores, multilabel)
    mask = finite_rows(x) if nan_strategy == "skip" else None
    stats = new_stats(x.shape[1], device=x.device)
    block, vmin, vmax = update_block(x, None, mask, fresh=True)
    fold_block(block, stats)
    result = compute_matrix(stats, vmin.double(), vmax.double(), undefined)
    warn_undefined(result.constant, undefined)
    return result.matrix
