"""The analysis of one epoch, as plain functions: matrices in, what gets written and logged out.

:func:`analyse_epoch` analyses every source's matrix, renders its heatmap in the primary source's order (or a
reference's) and gathers the scalars, tables and pictures the loggers get; :func:`write_epoch` writes the epoch's
files. Neither needs a Trainer: the callback runs them on its worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_classim.artifacts import write_snapshot
from lightning_classim.options import StructureOptions
from lightning_classim.picture import Picture, labelled_heatmap
from lightning_classim.render import HeatmapOptions
from lightning_classim.sources import Source
from lightning_classim.structure import StructureResult, agreement, analyze, md_escape, notes_not_warned

__all__ = ["EpochAnalysis", "Panel", "analyse_epoch", "offdiag_sample", "write_epoch"]

#: The histogram of similarity values is drawn from at most this many pairs (evenly thinned).
HIST_MAX_VALUES = 1_000_000


@dataclass
class Panel:
    """One source's pictures and tables of one epoch (``path`` is ``""`` for the primary source)."""

    path: str
    image: np.ndarray | None = None
    markdown: str = ""
    table_columns: list[str] = field(default_factory=list)
    table_rows: list[list[Any]] = field(default_factory=list)
    histogram: np.ndarray | None = None
    pair_columns: list[str] = field(default_factory=list)
    pair_rows: list[list[Any]] = field(default_factory=list)
    pairs_markdown: str = ""


@dataclass
class EpochAnalysis:
    """What :func:`analyse_epoch` returns.

    Attributes:
        results: each source's analysis, by source name (in the order of the sources).
        images: each source's picture (the heatmap with names, colour bar and title), by source name.
        panels: what the loggers show of each source (pictures, group tables, histograms).
        scalars: the scalars to log, without the callback's tag prefix (``n_groups``, ``features_layer4/n_groups``,
            ``agreement/features_layer4/group_ari``, ...).
        notes: ``(source, note)`` of what an analysis could not do as asked.
        pictures: each source's :class:`~lightning_classim.picture.Picture` (the image, and where its heatmap is).
        at_max_groups: ``(source, k)`` of the analyses whose automatic choice picked the most groups it tried.
    """

    results: dict[str, StructureResult]
    images: dict[str, np.ndarray]
    panels: list[Panel]
    scalars: dict[str, float]
    pictures: dict[str, Picture] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)
    at_max_groups: list[tuple[str, int]] = field(default_factory=list)


def analyse_epoch(
    matrices: Mapping[str, np.ndarray],
    sources: Sequence[Source],
    *,
    options: StructureOptions,
    class_names: Sequence[str] | None = None,
    taxonomy: Any = None,
    previous: Mapping[str, StructureResult] | None = None,
    reference: tuple[np.ndarray, np.ndarray | None] | None = None,
    reference_result: StructureResult | None = None,
    heatmap: HeatmapOptions | None = None,
    undefined: Mapping[str, Sequence[int]] | None = None,
    title: str = "",
) -> EpochAnalysis:
    """Analyse and render one epoch of every source; the first source is the primary one.

    Args:
        matrices: each source's ``(m, m)`` matrix, by source name.
        sources: the sources, the primary first.
        options: the analysis options of the sources that have none of their own.
        class_names: the class names.
        taxonomy: a known class structure (adds ``taxonomy_ari`` and ``taxonomy_tree_corr``).
        previous: each source's analysis of the previous epoch (adds ``drift``, ``group_ari``, ``order_distance``).
        reference: an order, and the groups to outline (or ``None``), to draw every heatmap in, in place of the
            primary source's.
        reference_result: a reference run's analysis: adds ``reference/matrix_corr``, ``reference/group_ari`` and
            ``reference/cophenetic_corr`` (the primary source against it).
        heatmap: the heatmap's size, colormap and how many class names it writes along its axes.
        undefined: each source's classes whose similarity was undefined (e.g. a constant score).
        title: the pictures' title, e.g. ``"classim, epoch 3"`` (each source's name and the counts are added).

    Returns:
        An :class:`EpochAnalysis`.
    """
    heatmap = heatmap or HeatmapOptions()
    previous = previous or {}
    undefined = undefined or {}
    primary = sources[0]
    results: dict[str, StructureResult] = {}
    out = EpochAnalysis(results=results, images={}, panels=[], scalars={})
    order: np.ndarray | None = None
    groups: np.ndarray | None = None
    coarse: np.ndarray | None = None  # the coarse level the primary source's picture outlines thick
    for src in sources:
        with notes_not_warned():  # the callback warns each source's notes once, not every epoch
            result = analyze(matrices[src.name], src.options or options, class_names=class_names,
                             previous=previous.get(src.name), taxonomy=taxonomy)  # fmt: skip
        results[src.name] = result
        out.notes.extend((src.name, note) for note in result.notes)
        if result.choice_at_max_groups:
            out.at_max_groups.append((src.name, max(result.silhouettes)))
        if src is primary:
            order, groups = (result.order, result.groups) if reference is None else reference
            if reference is None:
                coarse, groups = result.outlined_cuts()
        values = offdiag_sample(result.similarity) if not result.embedded else offdiag_sample_of(result)
        vmin, vmax, cmap = src.colour_scale(values, heatmap.cmap)
        name = "" if src is primary else f" {src.name}"
        line = f"{title}{name}: {result.num_classes} classes, {result.n_groups} groups".lstrip(": ")
        shown = result if result.embedded else result.similarity
        picture = labelled_heatmap(shown, order, groups, class_names=result.class_names, title=line,
                                   max_pixels=heatmap.max_pixels, cmap=cmap, vmin=vmin, vmax=vmax,
                                   max_names=heatmap.max_names, coarse_groups=coarse)  # fmt: skip
        out.pictures[src.name] = picture
        image = out.images[src.name] = picture.image
        prefix = "" if src is primary else f"{src.tag}/"
        out.scalars.update({prefix + k: float(v) for k, v in result.metrics.items() if np.isfinite(v)})
        if src is not primary:
            both = agreement(results[primary.name], result, trees=False)
            out.scalars.update({f"agreement/{src.tag}/{k}": v for k, v in both.items()})
        elif reference_result is not None:
            out.scalars.update({f"reference/{k}": v for k, v in agreement(result, reference_result).items()})
        out.panels.append(_panel("" if src is primary else src.tag, result, image, values))
    out.scalars["constant_classes"] = float(len(undefined.get(primary.name, ())))
    if taxonomy is not None and len(sources) > 1:
        out.panels[0].markdown += "\n\n" + _taxonomy_table(sources, results)
    return out


def write_epoch(
    save_dir: Path,
    epoch: int,
    step: int,
    sources: Sequence[Source],
    analysis: EpochAnalysis,
    undefined: Mapping[str, Sequence[int]] | None = None,
    *,
    run_id: str | None = None,
    explorer_page: str | None = None,
) -> list[Path]:
    """Write every source's snapshot folder of one epoch and return them.

    The primary source's folder is in ``save_dir`` (with ``explorer_page`` as its ``explorer.html``), the others'
    under ``save_dir/sources/<tag>``; each folder appears whole or not at all
    (:func:`~lightning_classim.artifacts.write_snapshot`), and its ``summary.json`` names the run (``run_id``).
    """
    undefined = undefined or {}
    folders = []
    for src in sources:
        primary = src is sources[0]
        folder = save_dir if primary else save_dir / "sources" / src.tag
        extra: dict[str, Any] = {"source": src.name, "constant_classes": [int(i) for i in undefined.get(src.name, ())]}
        if run_id is not None:
            extra["run_id"] = run_id
        if src.name in analysis.pictures:  # where the heatmap sits in heatmap.png (left, top, right, bottom)
            extra["heatmap_box"] = list(analysis.pictures[src.name].box)
        files: dict[str, str | bytes] | None = None
        if primary and explorer_page is not None:
            files = {"explorer.html": explorer_page}
        folders.append(write_snapshot(folder, epoch, step, analysis.results[src.name], analysis.images[src.name],
                                      extra, files=files))  # fmt: skip
    return folders


def _panel(path: str, result: StructureResult, image: np.ndarray, values: np.ndarray) -> Panel:
    return Panel(
        path=path,
        image=image,
        markdown=result.summary_markdown(),
        table_columns=list(StructureResult.GROUP_COLUMNS),
        table_rows=result.group_rows(),
        histogram=values,
        pair_columns=list(StructureResult.PAIR_COLUMNS),
        pair_rows=result.pair_rows(),
        pairs_markdown=result.pairs_markdown(),
    )


def _taxonomy_table(sources: Sequence[Source], results: Mapping[str, StructureResult]) -> str:
    """Which source's tree is closest to the known taxonomy, and a table of all."""
    fits = {src.name: results[src.name].metrics.get("taxonomy_tree_corr", float("nan")) for src in sources}
    best = max(fits, key=lambda k: -np.inf if not np.isfinite(fits[k]) else fits[k])
    lines = ["| source | taxonomy tree corr | taxonomy ARI |", "| --- | ---: | ---: |"]
    for src in sources:
        m = results[src.name].metrics
        lines.append(f"| {md_escape(src.name)} | {m.get('taxonomy_tree_corr', float('nan')):.3f} | "
                     f"{m.get('taxonomy_ari', float('nan')):.3f} |")  # fmt: skip
    return f"Source closest to the taxonomy: **{md_escape(best)}**\n\n" + "\n".join(lines)


def offdiag_sample(sim: np.ndarray) -> np.ndarray:
    """Off-diagonal values (upper triangle), evenly thinned to at most a million, as float32."""
    m = sim.shape[0]
    rows, cols = np.triu_indices(m, 1) if m <= 1500 else _thinned_pairs(m)
    return sim[rows, cols].astype(np.float32)


def offdiag_sample_of(result: StructureResult) -> np.ndarray:
    """:func:`offdiag_sample` of an embedded result: the same pairs, from dot products of its vectors."""
    assert result.vectors is not None
    m = result.num_classes
    rows, cols = np.triu_indices(m, 1) if m <= 1500 else _thinned_pairs(m)
    out = np.empty(rows.shape[0], dtype=np.float32)
    for lo in range(0, rows.shape[0], 65536):
        a, b = rows[lo : lo + 65536], cols[lo : lo + 65536]
        out[lo : lo + 65536] = np.einsum("ij,ij->i", result.vectors[a], result.vectors[b])
    return np.clip(out, -1.0, 1.0)


def _thinned_pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
    n_pairs = m * (m - 1) // 2
    k = np.linspace(0, n_pairs - 1, min(n_pairs, HIST_MAX_VALUES)).astype(np.int64)
    # invert the condensed index k -> (i, j) with i < j
    i = (m - 2 - np.floor(np.sqrt(-8 * k + 4 * m * (m - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = (k + i + 1 - m * (m - 1) // 2 + (m - i) * ((m - i) - 1) // 2).astype(np.int64)
    return i, j
