r"""The exact class similarity of a linear head, without the ``m x m`` matrix.

Most classifiers end in a linear layer: logits :math:`s = W h + b` from features :math:`h` of width ``D``. Then
:math:`\mathrm{Cov}(s) = W \Sigma_h W^T`, and with :math:`\Sigma_h = L L^T` the Pearson correlation of classes ``i``
and ``j`` is exactly the cosine of :math:`L^T w_i` and :math:`L^T w_j` (the bias shifts a logit by a constant and
changes no correlation). :class:`HeadSimilarity` streams the ``D x D`` feature covariance (the same float64 state,
blocks and DDP merge as :class:`~lightning_classim.ClassSimilarity`, whose numerics it shares): ``O(N D^2)`` time
and ``O(D^2)`` memory whatever ``m``. :meth:`HeadSimilarity.compute` turns it and the head's weight into
:class:`ClassEmbeddings`: unit rows whose dot products are the similarity matrix, its rows, neighbours and block
means, exactly, in ``O(m D)`` memory.

Where it applies: the logits of a linear head. Probabilities (softmax, sigmoid) and per-sample ranks are not linear
in ``h``; they keep the dense route (:class:`~lightning_classim.ClassSimilarity`), which refuses sizes whose state
would not fit (see :data:`~lightning_classim.metric.DENSE_MAX_CLASSES`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_classim._streaming import unpack
from lightning_classim._validation import check_int
from lightning_classim.metric import ClassSimilarity

__all__ = ["ClassEmbeddings", "HeadSimilarity", "check_finite_head"]


class ClassEmbeddings:
    """Unit class vectors whose dot products are the Pearson correlations of the head's logits.

    Attributes:
        vectors: ``(m, r)`` float32, unit rows (``r`` the rank of the feature covariance, at most ``D``); a class
            whose logit never varies has a zero row (its correlation is undefined: 0, and 1 with itself).
        constant_classes: indices of those classes.

    Example:
        >>> import torch
        >>> emb = ClassEmbeddings(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), torch.zeros(0, dtype=torch.long))
        >>> emb.matrix()
        tensor([[1.0000, 0.6000, 0.0000],
                [0.6000, 1.0000, 0.8000],
                [0.0000, 0.8000, 1.0000]])
        >>> emb.neighbours(1).indices.flatten().tolist()
        [1, 2, 1]
    """

    def __init__(self, vectors: Tensor, constant_classes: Tensor) -> None:
        self.vectors = vectors
        self.constant_classes = constant_classes

    @property
    def num_classes(self) -> int:
        """Number of classes ``m``."""
        return int(self.vectors.shape[0])

    def __repr__(self) -> str:
        return f"ClassEmbeddings(num_classes={self.num_classes}, rank={self.vectors.shape[1]})"

    def matrix(self, rows: Tensor | slice | None = None) -> Tensor:
        """The similarity matrix, or some of its rows: ``vectors[rows] @ vectors.T`` with a diagonal of 1.

        The whole matrix is ``4 m^2`` bytes: at large ``m`` ask for rows.
        """
        index = torch.arange(self.num_classes, device=self.vectors.device)[rows if rows is not None else slice(None)]
        out = (self.vectors[index] @ self.vectors.T).clamp_(-1.0, 1.0)
        out[torch.arange(index.shape[0], device=out.device), index] = 1.0
        return out

    def neighbours(self, k: int, block: int = 4096) -> torch.return_types.topk:
        """Each class's ``k`` most similar other classes, exactly (``values`` and ``indices``, ``(m, k)``).

        Computed ``block`` rows at a time (``4 block m`` bytes each), never the whole matrix.

        Raises:
            ValueError: if ``k`` is not an int in ``1..m - 1``.
        """
        m = self.num_classes
        k = check_int("k", k, 1, f"Pass 1..{m - 1} (the other classes).")
        if k > m - 1:
            raise ValueError(f"Expected argument `k` to be at most {m - 1} (the other classes), but got {k}.")
        values = torch.empty(m, k, dtype=self.vectors.dtype, device=self.vectors.device)
        indices = torch.empty(m, k, dtype=torch.long, device=self.vectors.device)
        for lo in range(0, m, block):
            hi = min(m, lo + block)
            sims = self.vectors[lo:hi] @ self.vectors.T
            sims[torch.arange(hi - lo, device=sims.device), torch.arange(lo, hi, device=sims.device)] = -float("inf")
            top = torch.topk(sims, k, dim=1)
            values[lo:hi], indices[lo:hi] = top.values.clamp_(-1.0, 1.0), top.indices
        return torch.return_types.topk((values, indices))

    def block_means(self, labels: Tensor) -> Tensor:
        """The mean similarity of every pair of groups (with the diagonal's 1s), from the groups' mean vectors.

        ``labels``: a group ``0..k-1`` per class. The mean over the block of groups ``a`` and ``b`` is the dot
        product of their mean vectors: ``O(m r + k^2 r)``.
        """
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.vectors.device)
        k = int(labels.max()) + 1
        sums = torch.zeros(k, self.vectors.shape[1], dtype=torch.float64, device=self.vectors.device)
        sums.index_add_(0, labels, self.vectors.to(torch.float64))
        sizes = torch.bincount(labels, minlength=k).to(torch.float64)
        means = (sums @ sums.T) / torch.outer(sizes, sizes)
        # the diagonal blocks hold each class with itself: 1 for every class, |v|^2 in the product (0 or 1)
        norms = torch.zeros(k, dtype=torch.float64, device=self.vectors.device)
        norms.index_add_(0, labels, (self.vectors.to(torch.float64) ** 2).sum(1))
        means.diagonal().add_((sizes - norms) / sizes**2)
        return means


def check_finite_head(weight: Tensor, bias: Tensor | None, name: str) -> None:
    """A head's weight and bias hold finite numbers (a diverged training gives NaN class vectors otherwise).

    Raises:
        ValueError: naming the head, how many values are not finite, and in which rows.
    """
    for what, value in (("weight", weight), ("bias", bias)):
        if value is None:
            continue
        bad = ~torch.isfinite(torch.as_tensor(value).detach())
        if bool(bad.any()):
            rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"Expected the {what} of the head {name!r} to be finite, but it holds {int(bad.sum())} NaN or infinite "
                f"values (classes {rows}{', ...' if int(bad.reshape(bad.shape[0], -1).any(dim=1).sum()) > 5 else ''})."
                " The training diverged: lower the learning rate, or clip the gradients."
            )


class HeadSimilarity(ClassSimilarity):
    """Streams the features a linear head reads; gives the exact class similarity of its logits.

    Feed :meth:`update` the head's input (``(N, D)``); :meth:`compute` takes the head's weight ``(m, D)`` (and,
    for symmetry, its bias, which changes no correlation) and returns :class:`ClassEmbeddings`. The state is the
    ``D x D`` float64 covariance of :class:`~lightning_classim.ClassSimilarity` over the ``D`` features (``8 D^2``
    bytes: 2 MB at ``D = 512``, whatever ``m``), merged exactly across processes. ``compute`` is not cached (the
    weights change between calls).

    Args:
        num_features: the head's input width ``D``.
        nan_strategy: ``"error"`` or ``"skip"`` rows with non-finite features (as ``ClassSimilarity``).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: if ``num_features`` is not an int > 1.

    Example:
        >>> import numpy as np, torch
        >>> _ = torch.manual_seed(0)
        >>> head = torch.nn.Linear(16, 50)
        >>> features = torch.randn(400, 16) @ torch.randn(16, 16)
        >>> metric = HeadSimilarity(num_features=16)
        >>> metric.update(features)
        >>> emb = metric.compute(head.weight, head.bias)
        >>> logits = head(features).detach().numpy()
        >>> bool(np.abs(emb.matrix().numpy() - np.corrcoef(logits, rowvar=False)).max() < 1e-5)
        True
    """

    def __init__(self, num_features: int, *, nan_strategy: str = "error", **kwargs: Any) -> None:
        kwargs.setdefault("compute_with_cache", False)
        super().__init__(num_features, scores="logits", nan_strategy=nan_strategy, undefined="zero", **kwargs)  # type: ignore[arg-type]
        self.num_features = self.num_classes

    def update(self, features: Tensor) -> None:  # type: ignore[override]
        """Add one batch of the head's input features, ``(N, num_features)`` (any float dtype).

        Raises:
            TypeError: if ``features`` is not a floating point tensor.
            ValueError: if it is not of shape ``(N, num_features)``.
        """
        if not isinstance(features, Tensor) or not features.is_floating_point():
            raise TypeError(
                f"Expected argument `features` to be a float tensor (the head's input), but got "
                f"{getattr(features, 'dtype', type(features).__name__)}."
            )
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"Expected argument `features` to be of shape (N, {self.num_features}) (the head's input), but got "
                f"{tuple(features.shape)}. Hook the head's input, not its output."
            )
        super().update(features)

    def compute(self, weight: Tensor, bias: Tensor | None = None) -> ClassEmbeddings:  # type: ignore[override]
        """The class embeddings of the head ``weight`` ``(m, num_features)`` over the features seen.

        Raises:
            ValueError: with fewer than 2 samples, non-finite features (``nan_strategy="error"``), or a weight of
                the wrong shape.
        """
        w = torch.as_tensor(weight).detach()
        if w.ndim != 2 or w.shape[1] != self.num_features:
            raise ValueError(
                f"Expected argument `weight` to be the head's (m, {self.num_features}) weight, but got shape "
                f"{tuple(w.shape)}."
            )
        if bias is not None and tuple(torch.as_tensor(bias).shape) != (w.shape[0],):
            raise ValueError(
                f"Expected argument `bias` of shape ({w.shape[0]},), but got {tuple(torch.as_tensor(bias).shape)}."
            )
        check_finite_head(w, bias, "weight")
        self._fold()
        n, mean, m2 = unpack(self.stats)
        count = int(n.item())
        if count < 2:
            raise ValueError(
                f"Expected at least 2 samples of features to compute a correlation, but got {count}. Call `update` "
                "with the head's input of more validation batches before `compute`."
            )
        if not bool(torch.isfinite(mean).all()):
            raise ValueError(
                "Expected the features to be finite, but some batches held NaN or infinite values. Fix the model, "
                "or pass `nan_strategy='skip'` to leave those rows out."
            )
        if not bool(torch.isfinite(m2).all()):
            raise ValueError(
                "Expected features whose covariance fits float64, but it overflowed (features of magnitude above "
                "about 1e150). Scale the head's input down (a normalisation before the head), or check the model."
            )
        self.num_skipped = int(self.skipped.item())
        cov = m2 / (count - 1)
        top = cov.diagonal().abs().max().clamp(min=torch.finfo(torch.float64).tiny)
        evals, evecs = torch.linalg.eigh((cov + cov.T) / (2 * top))  # in units of the largest variance: no overflow
        keep = evals > evals.max().clamp(min=0) * cov.shape[0] * torch.finfo(torch.float64).eps
        root = evecs[:, keep] * evals[keep].sqrt()  # Sigma / top = root root^T
        w64 = w.to(device=root.device, dtype=torch.float64)
        w64 = w64 / w64.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)  # r is per-class
        vectors = w64 @ root
        norms = vectors.norm(dim=1)
        # a class is constant when its logit's spread is nil next to what its own weight could give (scale-free:
        # a class whose weight is 1e-13 times the others' is as defined as any)
        reach = w64.norm(dim=1) * evals.max().clamp(min=0).sqrt()
        constant = norms <= reach * 1e-10
        vectors = torch.where(constant[:, None], torch.zeros_like(vectors), vectors / norms.clamp(min=1e-300)[:, None])
        self.constant_classes = constant.nonzero().flatten().cpu()
        return ClassEmbeddings(vectors.to(torch.float32), self.constant_classes)
