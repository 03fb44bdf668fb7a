"""Rendering of ordered similarity matrices: a fast RGB heatmap, a labelled figure and a dendrogram.

Nothing here opens a window: figures are :class:`matplotlib.figure.Figure` objects created without pyplot (no
global figure registry to leak into), and :func:`render_heatmap` is a colour lookup on a numpy array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from lightning_classim._files import atomic_write
from lightning_classim._validation import check_finite_number, check_int, check_order

__all__ = [
    "HeatmapOptions",
    "check_cmap",
    "colormap_lut",
    "grid_image",
    "plot_dendrogram",
    "plot_matrix",
    "render_heatmap",
    "save_png",
]

_NAN_RGB = (200, 200, 200)
#: The largest side of a rendered heatmap, in pixels (8192 x 8192 RGB is 201 MB).
MAX_SIDE = 8192


def check_cmap(cmap: object) -> str:
    """``cmap`` if it names a matplotlib colormap.

    Raises:
        ValueError: naming the value and a colormap to try.
    """
    import matplotlib

    if not isinstance(cmap, str) or cmap not in matplotlib.colormaps:
        raise ValueError(
            f"Expected argument `cmap` to be a matplotlib colormap name, but got {cmap!r}. Try 'RdBu_r' or 'magma'."
        )
    return cmap


def _check_pixels(max_pixels: object, min_pixels: object) -> tuple[int, int]:
    """The sides in pixels: ``max_pixels`` in 16..8192, ``min_pixels`` in 1..8192 (at most ``max_pixels`` is used)."""
    sides = []
    for name, value, low in (("max_pixels", max_pixels, 16), ("min_pixels", min_pixels, 1)):
        number = check_int(name, value, low, f"Pass a side in pixels, {low}..{MAX_SIDE}.")
        if number > MAX_SIDE:
            raise ValueError(
                f"Expected argument `{name}` to be an int in {low}..{MAX_SIDE}, but got {value!r}. Pass a side in "
                f"pixels (a {MAX_SIDE} x {MAX_SIDE} image takes 201 MB)."
            )
        sides.append(number)
    return sides[0], min(sides[1], sides[0])


@dataclass(frozen=True)
class HeatmapOptions:
    """How the callback draws its heatmaps.

    Args:
        max_pixels: largest side of the heatmap; larger matrices are block-averaged (16..8192).
        cmap: matplotlib colormap of correlations (rates and IoU use magma).
        max_names: up to this many classes, every class name is written along both axes; above it, each group's
            number and first names (0: no names at all).

    Raises:
        ValueError: for a side outside 16..8192, an unknown colormap or a negative ``max_names``.

    Example:
        >>> HeatmapOptions(max_pixels=512).cmap
        'RdBu_r'
    """

    max_pixels: int = 1024
    cmap: str = "RdBu_r"
    max_names: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_pixels", _check_pixels(self.max_pixels, 1)[0])
        check_cmap(self.cmap)
        object.__setattr__(self, "max_names", check_int("max_names", self.max_names, 0))


def _as_square(matrix: Any, name: str = "matrix") -> np.ndarray:
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().float().numpy()
    arr = np.asarray(matrix)
    if arr.dtype not in (np.float32, np.float64):  # float64 stays: no full-size copy just to render
        arr = arr.astype(np.float32)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ValueError(f"Expected argument `{name}` to be a square (m, m) matrix, but got shape {arr.shape}.")
    return arr


def colormap_lut(cmap: str) -> np.ndarray:
    """The 256 RGB ``uint8`` colours of a matplotlib colormap, from its first to its last."""
    return _lut(cmap)


def _lut(cmap: str) -> np.ndarray:
    import matplotlib

    colormap = matplotlib.colormaps[check_cmap(cmap)]
    return (colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def block_mean(mat: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks (the last block may be partial), ignoring NaN."""
    m = mat.shape[0]
    p = -(-m // factor)
    pad = p * factor - m
    valid = np.isfinite(mat)
    vals = np.where(valid, mat, 0.0).astype(np.float32)
    if pad:
        vals = np.pad(vals, ((0, pad), (0, pad)))
        valid = np.pad(valid, ((0, pad), (0, pad)))
    sums = vals.reshape(p, factor, p, factor).sum(axis=(1, 3))
    counts = valid.reshape(p, factor, p, factor).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)


def _ordered_block_mean(mat: np.ndarray, order: np.ndarray, factor: int) -> np.ndarray | None:
    """Means of ``factor x factor`` blocks of ``mat[np.ix_(order, order)]`` without forming the reordered matrix.

    Two sparse indicator products (one pass over ``mat``). ``None`` when a block holds a non-finite value, for the
    NaN-aware path.
    """
    from scipy.sparse import csr_matrix

    m = mat.shape[0]
    p = -(-m // factor)
    position = np.empty(m, dtype=np.intp)
    position[order] = np.arange(m)
    indicator = csr_matrix((np.ones(m, dtype=mat.dtype), (position // factor, np.arange(m))), shape=(p, m))
    row_sums = np.asarray(indicator @ mat)  # (p, m): sums over the rows of each block
    sums = np.asarray(indicator @ np.ascontiguousarray(row_sums.T)).T
    if not np.isfinite(sums).all():
        return None
    sizes = np.bincount(position // factor, minlength=p).astype(np.float64)
    return (sums / np.outer(sizes, sizes)).astype(np.float32)


def _vectors_of(matrix: Any) -> np.ndarray | None:
    """The ``(m, r)`` unit class vectors of class embeddings (anything with ``vectors`` set), else ``None``."""
    if isinstance(matrix, np.ndarray) or getattr(matrix, "vectors", None) is None:
        return None
    vectors = matrix.vectors
    arr = vectors.detach().cpu().numpy() if hasattr(vectors, "detach") else np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"Expected class vectors of shape (m, r), but got shape {arr.shape}.")
    return arr


def num_classes_of(matrix: Any) -> int:
    """``m`` of a square matrix or of class embeddings."""
    vectors = _vectors_of(matrix)
    if vectors is not None:
        return int(vectors.shape[0])
    return int(np.shape(matrix)[0])


def vector_block_mean(vectors: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Means of the blocks of the matrix ``V V^T`` (diagonal 1) in ``order``, over runs of classes from ``starts``.

    Block ``(a, b)`` is the mean over the classes at positions ``starts[a]..starts[a+1]`` and ``starts[b]..``: exact
    and ``O(m r)``, from the runs' sum vectors (plus, on the diagonal, ``1 - |v|^2`` for each class, whose similarity
    with itself is 1).
    """
    vec = np.asarray(vectors, dtype=np.float64)[order]
    m = vec.shape[0]
    sizes = np.diff(np.append(starts, m)).astype(np.float64)
    sums = np.add.reduceat(vec, starts, axis=0)
    block = sums @ sums.T
    block[np.diag_indices(starts.shape[0])] += np.add.reduceat(1.0 - (vec * vec).sum(1), starts)
    return np.clip(block / np.outer(sizes, sizes), -1.0, 1.0).astype(np.float32)


def render_heatmap(
    matrix: Any,
    order: Any = None,
    groups: Any = None,
    *,
    max_pixels: int = 1024,
    min_pixels: int = 384,
    cmap: str = "RdBu_r",
    vmin: float = -1.0,
    vmax: float = 1.0,
    line_rgb: tuple[int, int, int] = (20, 20, 20),
    coarse_groups: Any = None,
) -> np.ndarray:
    """Render a square matrix in a given order as an RGB image.

    A colormap lookup (not a per-cell plot): large matrices are block-averaged down to ``max_pixels``, small ones
    are enlarged by whole pixels up to ``min_pixels``. Group spans along the diagonal are outlined by thin lines, and
    the groups of a coarser level, when given, by thick ones.
    Any square matrix can be drawn in any order, so the confusion matrix can be shown in the similarity order.

    Args:
        matrix: ``(m, m)`` numpy array or torch tensor (NaN cells are drawn grey); or class embeddings (anything
            with ``vectors``, e.g. :class:`~lightning_classim.ClassEmbeddings` or an embedded
            :class:`~lightning_classim.StructureResult`): their matrix ``V V^T``, whose blocks are averaged from the
            blocks' sum vectors without the ``m x m`` matrix.
        order: the row/column order, a permutation of ``range(m)`` (default: as given); a reference run's order
            comes from :func:`lightning_classim.runs.reference_order`.
        groups: a group label per class (original class order); the boundaries are drawn where the label changes
            along ``order``.
        max_pixels: largest side of the image (16..8192); ``m`` above it is block-averaged.
        min_pixels: smallest side (1..``max_pixels``); ``m`` below it is enlarged by an integer factor.
        cmap: matplotlib colormap name.
        vmin: value mapped to the first colour.
        vmax: value mapped to the last colour.
        line_rgb: colour of the group outlines.
        coarse_groups: a coarser group label per class (a level of the same tree, e.g. from
            :meth:`~lightning_classim.StructureResult.outlined_cuts`): its groups are outlined thick (2 pixels, more on
            large images) in ``line_rgb``, and ``groups`` thin in a lighter shade.

    Returns:
        ``uint8`` array of shape ``(H, H, 3)``.

    Raises:
        ValueError: if the matrix is not square, ``order`` is not a permutation, ``groups`` has the wrong length,
            ``vmin`` or ``vmax`` is not finite or ``vmax <= vmin``, a side is out of range or ``cmap`` is unknown;
            ``coarse_groups`` of the wrong length.

    Example:
        >>> import numpy as np
        >>> img = render_heatmap(np.eye(3), groups=[0, 0, 1], min_pixels=6)
        >>> img.shape, img.dtype
        ((6, 6, 3), dtype('uint8'))
    """
    vectors = _vectors_of(matrix)
    mat = _as_square(matrix) if vectors is None else np.zeros((0, 0), dtype=np.float32)
    m = mat.shape[0] if vectors is None else vectors.shape[0]
    vmin, vmax = check_finite_number("vmin", vmin), check_finite_number("vmax", vmax)
    if not vmax > vmin:
        raise ValueError(f"Expected `vmax` > `vmin`, but got vmin={vmin} and vmax={vmax}.")
    max_pixels, min_pixels = _check_pixels(max_pixels, min_pixels)
    lut = _lut(cmap)
    idx = check_order(order, m) if order is not None else np.arange(m)
    factor = -(-m // max_pixels)
    block: np.ndarray | None
    if vectors is not None:
        block = vector_block_mean(vectors, idx, np.arange(0, m, factor))
        order = None  # already in the order
    else:
        block = _ordered_block_mean(mat, idx, factor) if factor > 1 else None
    if block is not None:
        mat = block
    else:
        if order is not None:
            mat = mat[np.ix_(idx, idx)]
        if factor > 1:
            mat = block_mean(mat, factor)
    scale = max(1, min_pixels // mat.shape[0]) if factor == 1 else 1
    nan = ~np.isfinite(mat)
    codes = np.clip((np.nan_to_num(mat, nan=vmin) - vmin) * (255.0 / (vmax - vmin)) + 0.5, 0, 255).astype(np.uint8)
    img = lut[codes]
    img[nan] = _NAN_RGB
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    fine_rgb = line_rgb if coarse_groups is None else tuple(int(c + (200 - c) * 0.45) for c in line_rgb)
    thick = 2 + img.shape[0] // 512
    for name, labels_in, rgb, width in (("groups", groups, fine_rgb, 1),
                                         ("coarse_groups", coarse_groups, line_rgb, thick)):  # fmt: skip
        if labels_in is None:
            continue
        labels = np.asarray(labels_in)
        if labels.shape != (m,):
            raise ValueError(
                f"Expected argument `{name}` to give one label per class ({m}), but got shape {labels.shape}."
            )
        _outline(img, labels[idx], m, rgb, width)
    return img


def _outline(img: np.ndarray, seq: np.ndarray, m: int, rgb: tuple[int, ...], width: int) -> None:
    """Outline the runs of equal labels of ``seq`` along the diagonal, ``width`` pixels wide, inside each square."""
    cuts = np.concatenate([[0], np.nonzero(seq[1:] != seq[:-1])[0] + 1, [m]])
    size = img.shape[0]
    px = np.minimum((cuts * size) // m, size - 1)
    for a, b in zip(px[:-1], px[1:]):
        b_end = max(b - 1, a) if b < size - 1 else size - 1
        w = max(1, min(width, (b_end - a + 1) // 3))
        img[a : a + w, a : b_end + 1] = rgb
        img[b_end - w + 1 : b_end + 1, a : b_end + 1] = rgb
        img[a : b_end + 1, a : a + w] = rgb
        img[a : b_end + 1, b_end - w + 1 : b_end + 1] = rgb


def save_png(image: np.ndarray, path: str | Path | IO[bytes]) -> Path | IO[bytes]:
    """Write an RGB ``uint8`` image as PNG (no display needed) to a path (atomically) or a binary file; return it.

    zlib level 1: a heatmap of fine noisy cells hardly compresses, and level 1 writes it about 3x faster than the
    default level 6 for the same size (1.72 vs 1.73 MB for m = 1000).
    """
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    if not isinstance(path, (str, Path)):
        picture.save(path, format="PNG", optimize=False, compress_level=1)
        return path
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda fh: picture.save(fh, format="PNG", optimize=False, compress_level=1))
    return out


def grid_image(images: list[np.ndarray], labels: list[str], cols: int) -> np.ndarray:
    """Square images of one size side by side, ``cols`` to a row, each with its label above it (RGB ``uint8``)."""
    from PIL import Image, ImageDraw

    size = images[0].shape[0]
    rows = math.ceil(len(images) / cols)
    pad, caption = 6, 16
    canvas = Image.new("RGB", (cols * (size + pad) + pad, rows * (size + pad + caption) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, label) in enumerate(zip(images, labels)):
        r, c = divmod(i, cols)
        x, y = pad + c * (size + pad), pad + r * (size + pad + caption)
        draw.text((x, y), label, fill="black")
        canvas.paste(Image.fromarray(img), (x, y + caption))
    return np.asarray(canvas)


def plot_matrix(
    matrix: Any,
    order: Any = None,
    groups: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "RdBu_r",
    vmin: float = -1.0,
    vmax: float = 1.0,
    max_labels: int = 80,
) -> Any:
    """A labelled figure of a (small) matrix: class names on the axes, group spans marked, a colour bar.

    Args:
        matrix: ``(m, m)`` matrix.
        order: row/column order.
        groups: a group label per class; each group's span is outlined and numbered.
        class_names: names for the axes (shown when ``m <= max_labels``).
        title: figure title.
        cmap: matplotlib colormap.
        vmin: value of the first colour.
        vmax: value of the last colour.
        max_labels: above this many classes the tick labels are left out.

    Returns:
        A :class:`matplotlib.figure.Figure` (not registered with pyplot; nothing to close).

    Example:
        >>> import numpy as np
        >>> fig = plot_matrix(np.eye(4), groups=[0, 0, 1, 1], class_names=list("abcd"))
        >>> len(fig.axes)
        2
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    mat = _as_square(matrix)
    m = mat.shape[0]
    idx = check_order(order, m) if order is not None else np.arange(m)
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(m)]
    if len(names) != m:
        raise ValueError(f"Expected argument `class_names` to name all {m} classes, but got {len(names)} names.")
    size = min(14.0, 4.0 + 0.14 * min(m, max_labels))
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(mat[np.ix_(idx, idx)], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="similarity")
    if m <= max_labels:
        ax.set_xticks(range(m), [names[i] for i in idx], rotation=90, fontsize=7)
        ax.set_yticks(range(m), [names[i] for i in idx], fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if groups is not None:
        seq = np.asarray(groups)[idx]
        cuts = np.concatenate([[0], np.nonzero(seq[1:] != seq[:-1])[0] + 1, [m]])
        for a, b in zip(cuts[:-1], cuts[1:]):
            ax.add_patch(Rectangle((a - 0.5, a - 0.5), b - a, b - a, fill=False, lw=1.2, ec="black"))
            ax.text(b - 0.5, a - 0.5, f" {seq[a]}", fontsize=8, va="top", ha="left", color="black")
    if title:
        ax.set_title(title)
    return fig


def plot_dendrogram(
    linkage: np.ndarray,
    order: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    max_labels: int = 80,
    title: str | None = None,
) -> Any:
    """Draw a dendrogram without scipy's recursive ``dendrogram()`` (works for any depth).

    Leaves sit at the positions of ``order`` (default: scipy's leaf order); each merge is a U-shape at its height.

    Args:
        linkage: scipy linkage matrix over ``m`` classes.
        order: the leaf order to draw (e.g. ``StructureResult.order``).
        class_names: leaf labels (shown when ``m <= max_labels``).
        max_labels: above this many leaves the labels are left out.
        title: figure title.

    Returns:
        A :class:`matplotlib.figure.Figure`.

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> fig = plot_dendrogram(linkage(np.arange(5.0)[:, None]))
        >>> len(fig.axes[0].collections)
        1
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from scipy.cluster.hierarchy import leaves_list

    z = np.asarray(linkage, dtype=np.float64)
    m = z.shape[0] + 1
    idx = check_order(order, m) if order is not None else leaves_list(z)
    xpos = np.zeros(2 * m - 1)
    xpos[idx] = np.arange(m)
    height = np.zeros(2 * m - 1)
    segments = []
    for i, (a, b, h, _) in enumerate(z):
        a, b = int(a), int(b)
        xpos[m + i] = 0.5 * (xpos[a] + xpos[b])
        height[m + i] = h
        segments.append([(xpos[a], height[a]), (xpos[a], h), (xpos[b], h), (xpos[b], height[b])])
    fig = Figure(figsize=(min(16.0, 4.0 + 0.12 * min(m, max_labels)), 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.add_collection(LineCollection(segments, colors="black", linewidths=0.6))
    ax.set_xlim(-0.5, m - 0.5)
    ax.set_ylim(0, float(z[:, 2].max()) * 1.05 if m > 1 else 1)
    ax.set_ylabel("merge distance")
    if class_names is not None and m <= max_labels:
        ax.set_xticks(range(m), [str(class_names[i]) for i in idx], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    if title:
        ax.set_title(title)
    return fig
