"""Compiled linkage (numba): scipy's nearest-neighbour chain on a square matrix, without holding the GIL.

:func:`nn_chain_linkage` gives the linkage matrix of :func:`scipy.cluster.hierarchy.linkage` for the methods that
scipy computes with its nearest-neighbour chain (complete, average, weighted, ward), bit for bit: the same scan
order, the same tie rule (the previous element of the chain first, then the lowest index), the same Lance-Williams
formulas evaluated in the same order, the same stable sort by height and the same relabelling. It is faster (2.3-2.9x
at 1,000-4,000 classes, ``benchmarks/bench_structure.py``) because it scans and updates contiguous rows of a square
matrix over a sorted list of the clusters still active, where scipy scans its condensed vector (strided for half of
every row) over all ``m`` slots and calls the update formula through a pointer. And it releases the GIL, so that an
analysis on the callback's worker thread does not stall the training thread (scipy's linkage holds the GIL
throughout: 0.2 s at 4,000 classes, over a second at 10,000).

It runs when numba imports and the environment variable ``LIGHTNING_CLASSIM_NUMBA`` is not ``"0"`` (:data:`ENABLED`);
else :mod:`.analysis` calls scipy. The kernels are compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

#: Whether the compiled linkage is wanted: numba is installed and ``LIGHTNING_CLASSIM_NUMBA`` is not ``"0"``. numba
#: itself is imported on first use (it takes a quarter of a second), so that importing the package stays light.
ENABLED: bool = os.environ.get("LIGHTNING_CLASSIM_NUMBA", "1") != "0" and importlib.util.find_spec("numba") is not None

#: The linkage methods of scipy's nearest-neighbour chain, with the kernel's codes.
NN_CHAIN_METHODS = {"complete": 0, "average": 1, "weighted": 2, "ward": 3}


def _nn_chain(dist: np.ndarray, method: int) -> np.ndarray:  # pragma: no cover - compiled
    """The ``nn_chain`` on a square distance matrix (overwritten); the merges as found, unlabelled."""
    n = dist.shape[0]
    z = np.empty((n - 1, 4))
    size = np.ones(n, dtype=np.int64)
    chain = np.empty(n, dtype=np.int64)
    active = np.arange(n)  # the clusters still active, in increasing order (scipy's scan order)
    n_active = n
    chain_length = 0
    x = 0
    y = 0
    for k in range(n - 1):
        if chain_length == 0:
            chain_length = 1
            chain[0] = active[0]
        while True:  # follow nearest neighbours until two are mutual
            x = chain[chain_length - 1]
            if chain_length > 1:  # prefer the previous element of the chain, so that the chain cannot cycle
                y = chain[chain_length - 2]
                current = dist[x, y]
            else:
                current = np.inf
            row = dist[x]
            for t in range(n_active):
                i = active[t]
                if i != x and row[i] < current:
                    current = row[i]
                    y = i
            if chain_length > 1 and y == chain[chain_length - 2]:
                break
            chain[chain_length] = y
            chain_length += 1
        chain_length -= 2
        if x > y:
            x, y = y, x
        nx = size[x]
        ny = size[y]
        z[k, 0] = x
        z[k, 1] = y
        z[k, 2] = current
        z[k, 3] = nx + ny
        size[x] = 0  # x is dropped, y becomes the merged cluster
        size[y] = nx + ny
        pos = 0
        while active[pos] != x:
            pos += 1
        for t in range(pos, n_active - 1):
            active[t] = active[t + 1]
        n_active -= 1
        row_x = dist[x]
        row_y = dist[y]
        # one loop per method (a branch inside the loop keeps it from being optimised)
        if method == 0:  # complete
            for t in range(n_active):
                i = active[t]
                if i != y:
                    new = row_x[i] if row_x[i] > row_y[i] else row_y[i]
                    row_y[i] = new
                    dist[i, y] = new
        elif method == 1:  # average
            for t in range(n_active):
                i = active[t]
                if i != y:
                    new = (nx * row_x[i] + ny * row_y[i]) / (nx + ny)
                    row_y[i] = new
                    dist[i, y] = new
        elif method == 2:  # weighted
            for t in range(n_active):
                i = active[t]
                if i != y:
                    new = 0.5 * (row_x[i] + row_y[i])
                    row_y[i] = new
                    dist[i, y] = new
        else:  # ward
            for t in range(n_active):
                i = active[t]
                if i != y:
                    ni = size[i]
                    inv = 1.0 / (nx + ny + ni)
                    d_xi = row_x[i]
                    d_yi = row_y[i]
                    new = math.sqrt(
                        (ni + nx) * inv * d_xi * d_xi + (ni + ny) * inv * d_yi * d_yi - ni * inv * current * current
                    )
                    row_y[i] = new
                    dist[i, y] = new
    return z


def _label(z: np.ndarray, n: int) -> None:  # pragma: no cover - compiled
    """The ``label`` of scipy: the cluster ids and sizes of merges sorted by height (union-find), in place."""
    parent = np.arange(2 * n - 1)
    size = np.ones(2 * n - 1)
    roots = np.empty(2, dtype=np.int64)
    for i in range(n - 1):
        for c in range(2):
            leaf = int(z[i, c])
            root = leaf
            while parent[root] != root:
                root = parent[root]
            while parent[leaf] != root:  # path compression
                nxt = parent[leaf]
                parent[leaf] = root
                leaf = nxt
            roots[c] = root
        x, y = roots[0], roots[1]
        z[i, 0] = min(x, y)
        z[i, 1] = max(x, y)
        parent[x] = n + i
        parent[y] = n + i
        size[n + i] = size[x] + size[y]
        z[i, 3] = size[n + i]


def _mirror_upper(out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Copy the upper triangle onto the lower one and zero the diagonal, in 64 x 64 tiles (cache and TLB friendly)."""
    m = out.shape[0]
    tile = 64
    for bi in range(0, m, tile):
        ie = min(bi + tile, m)
        for bj in range(bi + tile, m, tile):
            for j in range(bj, min(bj + tile, m)):
                for i in range(bi, ie):
                    out[j, i] = out[i, j]
        for i in range(bi, ie):
            out[i, i] = 0.0
            for j in range(i + 1, ie):
                out[j, i] = out[i, j]


@functools.cache
def _compiled() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]] | None:
    """The compiled kernels, or ``None`` (with a warning) if numba cannot be imported."""
    try:
        import numba
    except Exception as err:  # pragma: no cover - depends on the installation
        warnings.warn(
            f"numba could not be imported ({err!r}), so the structure analysis uses scipy's linkage (slower, and it "
            "holds the GIL). Reinstall numba, or set LIGHTNING_CLASSIM_NUMBA=0 to silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    jit = numba.njit(cache=True, nogil=True)
    return jit(_nn_chain), jit(_label), jit(_mirror_upper)


def available() -> bool:
    """Whether :func:`nn_chain_linkage` can run: :data:`ENABLED` and numba imports."""
    return ENABLED and _compiled() is not None


def _require() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    kernels = _compiled()
    if kernels is None:
        raise RuntimeError("numba cannot be imported; check `available()` before calling the compiled kernels.")
    return kernels


def one_minus(sim: np.ndarray) -> np.ndarray:
    """The square distances ``1 - s`` of the upper triangle of ``sim`` (both triangles), with a zero diagonal.

    Equal to ``squareform(squareform(1 - sim, checks=False))`` without the condensed vector in between, so that the
    caller can let the condensed vector go first (at 10,000 classes: 400 MB).

    Example:
        >>> import numpy as np
        >>> one_minus(np.array([[1.0, 0.25], [0.5, 1.0]])).tolist()
        [[0.0, 0.75], [0.75, 0.0]]
    """
    out = np.subtract(1.0, sim)
    _require()[2](out)
    return out


def nn_chain_linkage(dist: np.ndarray, method: str) -> np.ndarray:
    """The scipy linkage matrix of a square distance matrix, for the nearest-neighbour chain methods.

    Args:
        dist: ``(m, m)`` symmetric distances, float64 and C-contiguous, with a zero diagonal; overwritten (it is the
            working memory of the chain).
        method: one of :data:`NN_CHAIN_METHODS`.

    Returns:
        The ``(m - 1, 4)`` linkage matrix, equal to ``scipy.cluster.hierarchy.linkage(squareform(dist), method)``.

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> from scipy.spatial.distance import squareform
        >>> d = squareform(np.array([1.0, 4.0, 5.0, 3.0, 6.0, 2.0]))
        >>> bool(np.array_equal(nn_chain_linkage(d.copy(), "complete"), linkage(squareform(d), "complete")))
        True
    """
    if dist.dtype != np.float64 or not dist.flags.c_contiguous or dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(
            f"Expected argument `dist` to be a square C-contiguous float64 matrix, but got dtype {dist.dtype} and "
            f"shape {dist.shape}. Pass `np.ascontiguousarray(d, dtype=np.float64)`."
        )
    kernels = _require()
    nn_chain, label, _ = kernels
    z = nn_chain(dist, NN_CHAIN_METHODS[method])
    z = z[np.argsort(z[:, 2], kind="mergesort")]
    label(z, dist.shape[0])
    return z
