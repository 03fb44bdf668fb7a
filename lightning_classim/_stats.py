"""Small statistics shared by the analysis, the callback and the command line (numpy and scipy only).

Each is computed in one place: the Pearson correlation of two vectors or of two matrices' off-diagonal values, the
adjusted Rand index of two groupings, and the centred moments of a long vector.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial.distance import squareform

__all__ = [
    "adjusted_rand_index",
    "centred_moments",
    "condensed",
    "moments_to_stats",
    "offdiag_pearson",
    "pearson",
]

#: Chunk of the passes over all pairs: 64 KB buffers stay in cache and off the page-faulting mmap path.
CHUNK = 1 << 13


def condensed(mat: np.ndarray) -> np.ndarray:
    """Upper triangle (``k = 1``) of a square matrix in scipy's condensed order, as float64 (a new array)."""
    return squareform(np.ascontiguousarray(mat), checks=False).astype(np.float64, copy=False)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-d vectors, NaN if either is constant.

    Example:
        >>> import numpy as np
        >>> pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0]))
        0.9933992677987828
    """
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def offdiag_pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the off-diagonal values of two symmetric matrices (each pair once)."""
    return pearson(condensed(np.asarray(a, dtype=np.float64)), condensed(np.asarray(b, dtype=np.float64)))


def adjusted_rand_index(labels_a: Any, labels_b: Any) -> float:
    """Adjusted Rand index of two flat groupings (1 for identical partitions, about 0 for random ones).

    Args:
        labels_a: a label per class.
        labels_b: a label per class, same length.

    Returns:
        The adjusted Rand index (1.0 when both groupings put all classes in one group, or each in its own).

    Raises:
        ValueError: if the two groupings label different numbers of classes.

    Example:
        >>> adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7])
        1.0
    """
    a = np.unique(np.asarray(labels_a), return_inverse=True)[1].ravel()
    b = np.unique(np.asarray(labels_b), return_inverse=True)[1].ravel()
    if a.shape != b.shape:
        raise ValueError(
            f"Expected the two groupings to label the same classes, but got {a.shape[0]} and {b.shape[0]} labels."
        )
    n = a.shape[0]
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def comb2(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index = comb2(table)
    sum_a = comb2(table.sum(axis=1))
    sum_b = comb2(table.sum(axis=0))
    total = n * (n - 1) / 2
    expected = sum_a * sum_b / total if total else 0.0
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def centred_moments(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and the sums of squared and cubed deviations from it, chunk by chunk (the chunks stay in cache)."""
    mean = float(values.sum()) / values.size
    s2 = s3 = 0.0
    buf = np.empty(min(values.size, CHUNK))
    sq = np.empty_like(buf)
    for start in range(0, values.size, CHUNK):
        chunk = values[start : start + CHUNK]
        c = np.subtract(chunk, mean, out=buf[: chunk.size])
        c2 = np.multiply(c, c, out=sq[: chunk.size])
        s2 += float(c2.sum())
        s3 += float(np.dot(c2, c))
    return mean, s2, s3


def moments_to_stats(n: int, mean: float, s2: float, s3: float) -> tuple[float, float, float]:
    """Mean, standard deviation and skewness from centred sums over ``n`` values."""
    std = math.sqrt(max(s2 / n, 0.0))
    skew = (s3 / n) / std**3 if std > 0 else float("nan")
    return mean, std, skew
