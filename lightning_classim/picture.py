"""Pictures that read alone: the heatmap with class names (or group labels), a colour bar and a title.

:func:`labelled_heatmap` draws around :func:`~lightning_classim.render_heatmap`'s image with Pillow (no matplotlib,
no window): up to ``max_names`` classes, every class's name along both axes; beyond that, each group's number and
first names along the side, and the group numbers along the top; a colour bar with its range on the right; a title
line (e.g. the epoch) on top. The heatmap itself is unchanged: it sits in the picture at :attr:`Picture.box`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_classim.render import colormap_lut, render_heatmap

__all__ = ["Picture", "labelled_heatmap"]

#: Pixels per class below which names do not fit along the axes (the picture is enlarged up to ``max_pixels``).
_NAME_ROW = 10
#: Characters of a name kept along the axes.
_NAME_CHARS = 28
_PAD = 6


@dataclass(frozen=True)
class Picture:
    """A labelled heatmap: the RGB ``image``, and where the heatmap sits in it (``box``: left, top, right, bottom)."""

    image: np.ndarray
    box: tuple[int, int, int, int]


@functools.cache
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _short(name: str, chars: int = _NAME_CHARS) -> str:
    name = " ".join(str(name).split())
    return name if len(name) <= chars else name[: chars - 1] + "\u2026"


def _text_width(font: Any, text: str) -> int:
    return int(np.ceil(font.getlength(text)))


def _fit(font: Any, text: str, width: int) -> str:
    """``text``, or its longest prefix with an ellipsis that fits in ``width`` pixels (a binary search)."""
    if _text_width(font, text) <= width:
        return text
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if _text_width(font, text[:mid] + "\u2026") <= width:
            low = mid
        else:
            high = mid - 1
    return text[:low] + "\u2026"


def _spans(seq: np.ndarray) -> list[tuple[int, int, int]]:
    """``(label, start, end)`` of the runs of equal labels along the order."""
    cuts = np.concatenate([[0], np.nonzero(seq[1:] != seq[:-1])[0] + 1, [seq.shape[0]]])
    return [(int(seq[a]), int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def labelled_heatmap(
    matrix: Any,
    order: Any = None,
    groups: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "",
    max_pixels: int = 1024,
    cmap: str = "RdBu_r",
    vmin: float = -1.0,
    vmax: float = 1.0,
    max_names: int = 100,
    coarse_groups: Any = None,
) -> Picture:
    """The ordered heatmap with names or group labels, a colour bar with its range, and a title.

    Args:
        matrix: ``(m, m)`` matrix (numpy or torch), or class embeddings (see
            :func:`~lightning_classim.render_heatmap`).
        order: the row/column order (default: as given).
        groups: a group label per class; outlined in the heatmap, and labelled beside it when there are more than
            ``max_names`` classes.
        class_names: the names (default: the indices).
        title: the line on top (e.g. ``"classim/heatmap, epoch 11"``).
        max_pixels: largest side of the heatmap itself (block-averaged above it).
        cmap: matplotlib colormap name.
        vmin: value of the first colour.
        vmax: value of the last colour.
        max_names: up to this many classes, every name is written along both axes.
        coarse_groups: a coarser level of the same tree: outlined thick (``groups`` thin), and its numbers written
            above the heatmap when there are more than ``max_names`` classes.

    Returns:
        A :class:`Picture`.

    Raises:
        ValueError: as :func:`~lightning_classim.render_heatmap`, or for names of the wrong length.

    Example:
        >>> import numpy as np
        >>> pic = labelled_heatmap(np.eye(3), groups=[0, 0, 1], class_names=["cat", "dog", "car"], title="epoch 0")
        >>> pic.image.dtype, pic.image.shape[0] > pic.box[3] - pic.box[1]
        (dtype('uint8'), True)
    """
    from PIL import Image, ImageDraw

    from lightning_classim.render import num_classes_of

    m = num_classes_of(matrix)
    names = [str(i) for i in range(m)] if class_names is None else [str(n) for n in class_names]
    if len(names) != m:
        raise ValueError(f"Expected argument `class_names` to name all {m} classes, but got {len(names)} names.")
    idx = np.arange(m) if order is None else np.asarray(order, dtype=np.intp)
    labels = None if groups is None else np.asarray(groups)
    with_names = m <= max_names
    side = min(max_pixels, max(384, _NAME_ROW * m)) if with_names else 384  # names need about 10 pixels a class
    heat = render_heatmap(matrix, order, groups, max_pixels=max_pixels, min_pixels=side, cmap=cmap, vmin=vmin,
                          vmax=vmax, coarse_groups=coarse_groups)  # fmt: skip
    coarse = None if coarse_groups is None else np.asarray(coarse_groups)
    h = heat.shape[0]
    cell = h / m
    font = _font(max(7, min(11, int(cell) - 1)) if with_names else 11)
    small = _font(10)
    if with_names:
        shown = [_short(names[i]) for i in idx]
        margin = max(_text_width(font, s) for s in shown) + _PAD
        top_margin = margin
    else:
        shown = []
        margin = 220
        top_margin = 18
    title_h = 22 if title else 6
    bar_w, bar_gap, bar_text = 14, 10, max(_text_width(small, f"{v:.3g}") for v in (vmin, vmax, (vmin + vmax) / 2))
    left, top = margin + _PAD, title_h + top_margin
    width = left + h + bar_gap + bar_w + 4 + bar_text + _PAD
    height = top + h + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(Image.fromarray(heat), (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, 4), title, fill="black", font=_font(13))
    if with_names:
        rows = Image.new("RGB", (margin, h), "white")  # names along the side, ending at the heatmap
        cols = Image.new("RGB", (margin, h), "white")  # names starting at the edge: turned, they read upwards
        row_draw, col_draw = ImageDraw.Draw(rows), ImageDraw.Draw(cols)
        for k, name in enumerate(shown):
            y = (k + 0.5) * cell
            row_draw.text((margin - _PAD // 2, y), name, fill="black", font=font, anchor="rm")
            col_draw.text((_PAD // 2, y), name, fill="black", font=font, anchor="lm")
        canvas.paste(rows, (left - margin, top))
        canvas.paste(cols.rotate(90, expand=True), (left, title_h))
    elif labels is not None:
        for label, a, b in _spans(labels[idx]):
            y0, y1 = a * cell, b * cell
            if y1 - y0 >= 11:
                members = ", ".join(_short(names[i], 18) for i in idx[a:b][:6])
                text = _fit(small, f"{label} ({b - a}): {members}", margin - _PAD)
                draw.text((left - _PAD // 2, top + (y0 + y1) / 2), text, fill="black", font=small, anchor="rm")
        for label, a, b in _spans((labels if coarse is None else coarse)[idx]):
            y0, y1 = a * cell, b * cell
            if y1 - y0 >= 14:
                draw.text((left + (y0 + y1) / 2, top - 2), str(label), fill="black", font=small, anchor="mb")
    # the colour bar: the colormap from vmax (top) to vmin (bottom), with its range
    lut = colormap_lut(cmap)
    ramp = lut[np.clip((np.linspace(255, 0, h) + 0.5).astype(int), 0, 255)]
    bar_x = left + h + bar_gap
    canvas.paste(Image.fromarray(np.repeat(ramp[:, None, :], bar_w, axis=1)), (bar_x, top))
    draw.rectangle((bar_x - 1, top - 1, bar_x + bar_w, top + h), outline=(60, 60, 60))
    for value, y in ((vmax, top), ((vmin + vmax) / 2, top + h / 2), (vmin, top + h - 1)):
        anchor = "lt" if y == top else "lb" if y == top + h - 1 else "lm"
        draw.text((bar_x + bar_w + 4, y), f"{value:.3g}", fill="black", font=small, anchor=anchor)
    return Picture(np.asarray(canvas), (left, top, left + h, top + h))
