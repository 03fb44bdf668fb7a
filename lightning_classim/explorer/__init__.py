"""The class-similarity explorer: one self-contained HTML file per run (or per epoch).

Everything is inline and written by this project (``explorer.js``, ``explorer.css`` beside this module): no network,
no framework, no CDN. The data goes in as JSON and deflate-compressed base64 blobs, which the page inflates with the
browser's own ``DecompressionStream``.

What the page holds, per epoch (see :func:`explorer_html`):

* up to ``full_max`` classes (default 2,048): the whole matrix, one byte a cell (``r`` quantised to 1/127), in class
  order, so that any ordering (the tree's, a known taxonomy's, a reference run's) is a lookup;
* above that, an overview of block means in the last epoch's tree order (``overview`` blocks a side, default 1,024),
  and for the last epoch, full-resolution cells in a band around the diagonal (``band`` classes either side) and
  each class's ``neighbours`` nearest classes with their ``r``: 10,000 classes and 12 epochs fit in about 20 MB.
  Other cells are shown, and returned by ``classim.cell``, as their block's mean, marked ``approximate``.

Use :func:`write_explorer` for a run folder (``classim explore``) and :func:`explorer_html` for results in memory (the
callback). :func:`compare_html` puts two runs in one order with a difference view (``classim compare --html``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_classim._files import atomic_write
from lightning_classim.render import colormap_lut, vector_block_mean
from lightning_classim.structure import StructureResult, nearest_classes

__all__ = [
    "FULL_MAX",
    "ExplorerEpoch",
    "compare_html",
    "embedded_json",
    "explorer_html",
    "explorer_policy",
    "page_policy",
    "quantise",
    "write_explorer",
    "write_explorer_page",
]

#: Up to this many classes every epoch's whole matrix is in the page.
FULL_MAX = 2048
_ASSETS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ExplorerEpoch:
    """One epoch for the explorer: its number, global step and analysis."""

    epoch: int
    step: int
    result: StructureResult


def quantise(values: np.ndarray) -> np.ndarray:
    """``r`` in ``[-1, 1]`` as one byte: ``round((r + 1) * 127)`` (0..254); 255 for NaN. ``q / 127 - 1`` reads it back.

    Example:
        >>> quantise(np.array([-1.0, 0.0, 0.5, 1.0, np.nan])).tolist()
        [0, 127, 190, 254, 255]
    """
    v = np.asarray(values, dtype=np.float64)
    q = np.clip(np.rint((np.nan_to_num(v, nan=0.0) + 1.0) * 127.0), 0, 254).astype(np.uint8)
    q[~np.isfinite(v)] = 255
    return q


def _blob(array: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 6)).decode("ascii")


def _block_starts(m: int, blocks: int) -> np.ndarray:
    """The first position of each of ``blocks`` runs of nearly equal length along ``m`` classes."""
    return np.linspace(0, m, blocks + 1).round().astype(np.int64)[:-1]


def _block_means(sim: np.ndarray, order: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of the matrix over ``blocks x blocks`` runs of classes along ``order``; and each block's first position.

    Two ``np.add.reduceat`` passes over the rows and columns taken in ``order`` (NaN cells count as missing).
    """
    m = sim.shape[0]
    starts = _block_starts(m, blocks)
    edges = np.append(starts, m)
    rows = sim[order]
    finite = np.isfinite(rows)
    if not finite.all():
        counts = np.add.reduceat(np.add.reduceat(finite[:, order], starts, axis=0), starts, axis=1).astype(np.float64)
        rows = np.where(finite, rows, 0)
    else:
        sizes = np.diff(edges).astype(np.float64)
        counts = np.outer(sizes, sizes)
    sums = np.add.reduceat(np.add.reduceat(rows, starts, axis=0, dtype=np.float64)[:, order], starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), starts


def _vector_band(vectors: np.ndarray, order: np.ndarray, width: int) -> np.ndarray:
    """:func:`_band` of the matrix of unit class vectors."""
    m = vectors.shape[0]
    vec = np.asarray(vectors, dtype=np.float32)[order]
    out = np.full((m, 2 * width + 1), np.nan, dtype=np.float32)
    for d in range(-width, width + 1):
        lo, hi = max(0, -d), min(m, m - d)
        if hi > lo:
            out[lo:hi, d + width] = (
                1.0 if d == 0 else np.clip(np.einsum("ij,ij->i", vec[lo:hi], vec[lo + d : hi + d]), -1, 1)
            )
    return out


def _band(sim: np.ndarray, order: np.ndarray, width: int) -> np.ndarray:
    """``(m, 2 width + 1)``: row ``p`` holds the cells from position ``p - width`` to ``p + width`` (tree order)."""
    m = sim.shape[0]
    out = np.full((m, 2 * width + 1), np.nan, dtype=np.float32)
    for d in range(-width, width + 1):
        lo, hi = max(0, -d), min(m, m - d)
        if hi > lo:
            rows = order[lo:hi]
            cols = order[lo + d : hi + d]
            out[lo:hi, d + width] = sim[rows, cols]
    return out


def _neighbours(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class's ``k`` most similar other classes (indices, values), most similar first, in row blocks."""
    m = sim.shape[0]
    k = min(k, m - 1)
    idx = np.empty((m, k), dtype=np.int64)
    val = np.empty((m, k), dtype=np.float32)
    for lo in range(0, m, 1024):
        rows = np.array(sim[lo : lo + 1024], dtype=np.float32)
        rows[np.arange(rows.shape[0]), np.arange(lo, lo + rows.shape[0])] = -np.inf
        rows = np.nan_to_num(rows, nan=-np.inf)
        part = np.argpartition(-rows, k - 1, axis=1)[:, :k] if k < m else np.argsort(-rows, axis=1)[:, :k]
        pv = np.take_along_axis(rows, part, axis=1)
        ordered = np.argsort(-pv, axis=1, kind="stable")
        idx[lo : lo + 1024] = np.take_along_axis(part, ordered, axis=1)
        val[lo : lo + 1024] = np.take_along_axis(pv, ordered, axis=1)
    return idx, val


def _structure(result: StructureResult) -> dict[str, Any]:
    """The epoch's order, groups, levels, pairs, split and failed groups as plain JSON."""
    levels = [
        {"n_groups": lv.n_groups, "groups": lv.groups.astype(int).tolist(), "distinct": bool(lv.distinct)}
        for lv in result.levels
    ]
    pairs = [
        {"kind": p.kind, "i": p.i, "j": p.j, "score": _num(p.score), "similarity": _num(p.similarity)}
        for p in result.pairs
    ]
    split = [
        {"groups": list(s.groups), "a": list(s.members[0]), "b": list(s.members[1]), "similarity": _num(s.similarity)}
        for s in result.split_groups
    ]
    failed = [
        {"members": list(f.members), "groups": list(f.groups), "similarity": _num(f.similarity)}
        for f in result.failed_groups
    ]
    return {
        "order": result.order.astype(int).tolist(),
        "groups": result.groups.astype(int).tolist(),
        "n_groups": result.n_groups,
        "levels": levels,
        "pairs": pairs,
        "split": split,
        "failed": failed,
        "metrics": {k: _num(v) for k, v in result.metrics.items() if k in _SHOWN_METRICS},
    }


_SHOWN_METRICS = ("n_groups", "cophenetic_corr", "within_minus_between", "taxonomy_ari", "drift", "n_levels")


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _taxonomy_order(levels: Sequence[Sequence[int]], tree_order: np.ndarray) -> list[int]:
    """Classes sorted by their taxonomy labels, coarsest first, and by the tree order within."""
    position = np.empty(len(tree_order), dtype=np.int64)
    position[tree_order] = np.arange(len(tree_order))
    keys = [np.asarray(level) for level in reversed(levels)]
    return np.lexsort([position, *keys]).tolist()


def explorer_html(
    epochs: Sequence[ExplorerEpoch],
    *,
    title: str = "Class similarity",
    taxonomy: Sequence[Sequence[int]] | None = None,
    reference_order: Sequence[int] | None = None,
    full_max: int = FULL_MAX,
    overview: int = 1024,
    band: int = 64,
    neighbours: int = 10,
    compare: ExplorerEpoch | None = None,
    compare_title: str = "",
) -> str:
    """The explorer page of one run's epochs (oldest first), as one self-contained HTML string.

    Args:
        epochs: the epochs to show (the slider runs over them); all of one set of classes.
        title: the page's title.
        taxonomy: a known taxonomy's levels (integer labels per class, coarsest first): adds the "taxonomy" order.
        reference_order: a reference run's order: adds the "reference" order.
        full_max: up to this many classes, each epoch's whole matrix is in the page (see the module docstring).
        overview: above ``full_max``, the overview's blocks a side.
        band: above ``full_max``, the last epoch's full-resolution cells this many classes either side of the
            diagonal.
        neighbours: above ``full_max``, the last epoch's nearest classes kept per class.
        compare: a second run's epoch, shown in the first's order with a difference view (needs at most
            ``full_max`` classes).
        compare_title: the second run's name.

    Returns:
        The HTML text.

    Raises:
        ValueError: for no epochs, epochs of different numbers of classes, or a comparison of runs of different
            classes or of more than ``full_max`` classes.

    Example:
        >>> import numpy as np
        >>> from lightning_classim import analyze
        >>> sim = np.array([[1, 0.8, 0, 0], [0.8, 1, 0, 0], [0, 0, 1, 0.7], [0, 0, 0.7, 1]])
        >>> page = explorer_html([ExplorerEpoch(0, 10, analyze(sim, n_groups=2))], title="four classes")
        >>> page.startswith("<!DOCTYPE html>") and "four classes" in page and "http" not in page.split("</style>")[1]
        True
    """
    if not epochs:
        raise ValueError("Expected at least one epoch for the explorer, but got none.")
    last = epochs[-1].result
    m = last.num_classes
    names = list(last.class_names) or [str(i) for i in range(m)]
    for e in epochs:
        if e.result.num_classes != m:
            raise ValueError(
                f"Expected every epoch of the explorer to have {m} classes, but epoch {e.epoch} has "
                f"{e.result.num_classes}."
            )
    full = m <= full_max
    if compare is not None and (compare.result.num_classes != m or not full):
        raise ValueError(
            f"Expected the compared run to have the same {m} classes, at most {full_max}, but it has "
            f"{compare.result.num_classes}."
        )
    orders: dict[str, list[int]] = {"tree": last.order.astype(int).tolist()}
    if taxonomy is not None and full:
        orders["taxonomy"] = _taxonomy_order(taxonomy, last.order)
    if reference_order is not None and full and len(reference_order) == m:
        orders["reference"] = [int(i) for i in reference_order]
    data: dict[str, Any] = {
        "version": 1, "title": title, "m": m, "names": names, "full": full, "orders": orders,
        "lut": colormap_lut("RdBu_r").astype(int).tolist(), "epochs": [],
    }  # fmt: skip
    for e in epochs:
        entry = {"epoch": e.epoch, "step": e.step, **_structure(e.result)}
        if full:
            entry["full"] = _blob(quantise(np.asarray(e.result.matrix())))
        else:
            if e.result.embedded and e.result.vectors is not None:
                starts = _block_starts(m, min(overview, m))
                means = vector_block_mean(e.result.vectors, last.order, starts)
            else:
                means, starts = _block_means(np.asarray(e.result.similarity), last.order, min(overview, m))
            entry["overview"] = {
                "blocks": int(means.shape[0]),
                "starts": starts.tolist(),
                "data": _blob(quantise(means)),
            }
        data["epochs"].append(entry)
    if not full:
        width = min(band, m - 1)
        if last.embedded and last.vectors is not None:
            if last.nearest is not None and last.nearest[0].shape[1] >= min(neighbours, m - 1):
                idx, val = (a[:, : min(neighbours, m - 1)] for a in last.nearest)  # what the analysis found
            else:
                idx, val = nearest_classes(last.vectors, neighbours)
            cells = _vector_band(last.vectors, last.order, width)
        else:
            sim = np.asarray(last.similarity)
            idx, val = _neighbours(sim, neighbours)
            cells = _band(sim, last.order, width)
        data["detail"] = {
            "band": width, "cells": _blob(quantise(cells)),
            "k": int(idx.shape[1]), "index": _blob(idx.astype(np.uint32)), "values": _blob(quantise(val)),
        }  # fmt: skip
    if compare is not None:
        other = _blob(quantise(np.asarray(compare.result.similarity, dtype=np.float64)))
        data["compare"] = {"title": compare_title, "epoch": compare.epoch, "full": other}
    return _page(data, title)


def _assets() -> tuple[str, str]:
    """The page's inline script and style, exactly as they stand between their tags."""
    script = "\n" + (_ASSETS / "explorer.js").read_text(encoding="utf-8") + "\n"
    style = "\n" + (_ASSETS / "explorer.css").read_text(encoding="utf-8") + "\n"
    return script, style


def explorer_policy() -> str:
    """The Content-Security-Policy every explorer page carries (:func:`page_policy` of its script and style)."""
    return page_policy(*_assets())


def _page(data: dict[str, Any], title: str) -> str:
    script, style = _assets()
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{page_policy(script, style)}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f'<script id="classim-data" type="application/json">{embedded_json(data)}</script>\n'
        f"<script>{script}</script>\n</body>\n</html>\n"
    )


def embedded_json(data: Any) -> str:
    r"""JSON that is safe inside a ``<script>`` element, with non-ASCII escaped too.

    ``<``, ``>`` and ``&`` are written as ``\u003c``, ``\u003e`` and ``\u0026``, so that no name or path can close
    the element or open a comment (``</script>``, ``<!--``).

    Example:
        >>> embedded_json({"name": "</script><!--"})
        '{"name":"\\u003c/script\\u003e\\u003c!--"}'
    """
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page_policy(script: str, style: str) -> str:
    """The page's Content-Security-Policy: only its own inline script and style (by their hashes) run.

    Nothing is fetched: the page decodes its own data.
    """
    return (
        f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(style)}; img-src data: blob:; "
        "base-uri 'none'; form-action 'none'"
    )


def write_explorer(
    run: str | Path,
    out: str | Path | None = None,
    *,
    full_max: int = FULL_MAX,
) -> Path:
    """Write the explorer of a run folder (every epoch, the slider over them) and return the file.

    The taxonomy order comes from ``run.json`` (the callback saves its levels); the reference order from the
    reference run named there, when it is on disk.

    Args:
        run: a run folder (the callback's ``save_dir``), or a folder holding exactly one.
        out: the HTML file (default ``<run>/explorer.html``).
        full_max: see :func:`explorer_html`.

    Raises:
        RunError: if the run cannot be read.
    """
    from lightning_classim.runs import find_run

    page = write_explorer_page(run, full_max=full_max)
    target = Path(out) if out is not None else find_run(run) / "explorer.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, page.encode("utf-8"))
    return target


def write_explorer_page(run: str | Path, *, title: str | None = None, full_max: int = FULL_MAX) -> str:
    """The explorer page of a run folder, every epoch: what ``classim explore`` writes and TensorBoard's tab shows.

    The taxonomy order comes from ``run.json``; the reference order from the reference run named there, when it is
    on disk and has the run's classes.

    Raises:
        RunError: if the run cannot be read.
    """
    from lightning_classim.runs import RunError, load_run

    loaded = load_run(run)
    epochs = [ExplorerEpoch(s.epoch, s.step, s.result) for s in loaded.snapshots]
    reference = None
    ref_path = loaded.info.get("reference")
    if isinstance(ref_path, str):
        try:
            reference = load_run(ref_path).snapshots[-1].result.order.tolist()
        except (RunError, OSError, ValueError):
            reference = None
    return explorer_html(epochs, title=title or f"Class similarity: {loaded.path}",
                         taxonomy=loaded.info.get("taxonomy"), reference_order=reference,
                         full_max=full_max)  # fmt: skip


def compare_html(run_a: str | Path, run_b: str | Path, epoch: int | None = None) -> str:
    """Two runs in the first's order, with the second's matrix and the difference (``classim compare --html``).

    Raises:
        RunError: if a run cannot be read or has no such epoch.
        ValueError: if the runs have different classes, or more than ``FULL_MAX`` of them.
    """
    from lightning_classim.runs import load_run

    a, b = load_run(run_a), load_run(run_b)
    first, second = a.at_epoch(epoch), b.at_epoch(epoch)
    return explorer_html([ExplorerEpoch(first.epoch, first.step, first.result)], title=f"{a.path} vs {b.path}",
                         compare=ExplorerEpoch(second.epoch, second.step, second.result),
                         compare_title=str(b.path))  # fmt: skip
