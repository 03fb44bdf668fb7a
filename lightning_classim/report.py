"""``classim report``: a run's evolution as a report folder.

The scalars and levels over epochs, every heatmap in one order, the classes that changed group, the pairs worth a
look over the epochs (appear, persist, go), and the final group table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from lightning_classim._files import atomic_write
from lightning_classim.artifacts import Snapshot
from lightning_classim.render import grid_image, render_heatmap, save_png
from lightning_classim.runs import Run, load_run
from lightning_classim.structure import md_escape

__all__ = ["group_changes", "pair_history", "write_report"]


def group_changes(before: Snapshot, after: Snapshot) -> list[dict[str, Any]]:
    """Classes that changed group between two epochs.

    Groups are renumbered every epoch, so the groups of ``after`` are first matched to those of ``before`` by
    largest overlap (a linear assignment on the contingency table); a class changed group when its group in
    ``after`` is not matched to its group in ``before``.

    Returns:
        One dict per moved class: ``class``, ``name``, ``from_group``, ``to_group`` (groups as numbered in each
        epoch).
    """
    a, b = before.result.groups, after.result.groups
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    rows, cols = linear_sum_assignment(-table)
    match = dict(zip(cols.tolist(), rows.tolist()))
    moved = []
    for i in range(len(a)):
        if match.get(int(b[i])) != int(a[i]):
            moved.append(
                {"class": i, "name": after.result.class_names[i], "from_group": int(a[i]), "to_group": int(b[i])}
            )
    return moved


def pair_history(run: Run) -> list[dict[str, Any]]:
    """Each pair worth a look over the epochs: when it appears, whether it persists or goes.

    A pair is the same in two epochs when its kind and class names are (``Pair.key``).

    Returns:
        One dict per pair, most recent first (those of the last epoch first, highest score first): ``kind``, ``a``,
        ``b``, ``epochs`` (the epochs it was found in), ``first``, ``last`` (epochs), ``status`` (``"new"``: found
        only in the last epoch; ``"persists"``: found in the last epoch and before; ``"gone"``: not in the last
        epoch) and ``score`` (in the last epoch it was found in).
    """
    if not run.snapshots:
        return []
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in run.snapshots:
        for p in s.result.pairs:
            entry = seen.setdefault(p.key, {"kind": p.kind, "a": p.a, "b": p.b, "epochs": []})
            entry["epochs"].append(s.epoch)
            entry["score"] = p.score
    final = run.snapshots[-1].epoch
    several = len(run.snapshots) > 1
    for entry in seen.values():
        entry["first"], entry["last"] = entry["epochs"][0], entry["epochs"][-1]
        if entry["last"] != final:
            entry["status"] = "gone"
        else:
            entry["status"] = "new" if several and entry["first"] == final else "persists"
    return sorted(seen.values(), key=lambda e: (e["last"] != final, -e["last"], -e["score"]))


def _metrics_figure(run: Run) -> Any:
    from matplotlib.figure import Figure

    keys = [
        k
        for k in ("n_groups", "within_minus_between", "cophenetic_corr", "drift", "group_ari", "offdiag_skew",
                  "taxonomy_ari", "taxonomy_tree_corr")
        if any(_finite(s.metrics.get(k)) for s in run.snapshots)
    ]  # fmt: skip
    cols = 2
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(10, 2.6 * rows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = [(s.epoch, s.metrics[key]) for s in run.snapshots if _finite(s.metrics.get(key))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return fig


def _silhouette_curves(run: Run, most: int = 6) -> list[tuple[int, dict[int, float]]]:
    """The mean silhouette over the number of groups of up to ``most`` evenly spaced epochs (those that have one)."""
    curves = []
    for s in run.snapshots:
        curve = {k: v for k, v in s.result.silhouettes.items() if math.isfinite(v)}
        if curve:
            curves.append((s.epoch, curve))
    if len(curves) > most:
        curves = [curves[i] for i in sorted(set(np.linspace(0, len(curves) - 1, most).round().astype(int).tolist()))]
    return curves


def _silhouette_figure(curves: list[tuple[int, dict[int, float]]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for epoch, curve in curves:
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker=".", label=f"epoch {epoch}")
    ax.set_xlabel("number of groups")
    ax.set_ylabel("mean silhouette")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def write_report(path: str | Path, out: str | Path | None = None, max_pixels: int = 384) -> Path:
    """Write a report of one run: scalars over epochs, all heatmaps in one order (grid and GIF), group changes.

    Files (in ``out``, default ``<run>/report``): ``report.md`` (open this), ``metrics.png``, ``heatmaps.png``
    (outlining the last epoch's two levels), ``evolution.gif``, ``changes.json``, ``pairs.json`` (see
    :func:`pair_history`), ``report.json`` and, when the automatic choice chose the groups,
    ``silhouettes.png`` (mean silhouette over the number of groups, up to six epochs).

    Returns:
        The report folder.

    Raises:
        RunError: if the run cannot be read, or ``out`` lies inside an epoch folder.
    """
    from PIL import Image

    run = load_run(path)
    folder = Path(out) if out is not None else run.path / "report"
    folder.mkdir(parents=True, exist_ok=True)
    last = run.snapshots[-1]
    final = last.result
    coarse, fine = final.outlined_cuts()
    images = [
        render_heatmap(s.result if s.result.embedded else s.result.similarity, final.order, fine,
                       max_pixels=max_pixels, min_pixels=max_pixels // 2, coarse_groups=coarse)
        for s in run.snapshots
    ]  # fmt: skip
    labels = [f"epoch {s.epoch}" for s in run.snapshots]
    save_png(grid_image(images, labels, cols=min(4, len(images))), folder / "heatmaps.png")
    frames = [Image.fromarray(img) for img in images]
    atomic_write(
        folder / "evolution.gif",
        lambda fh: frames[0].save(fh, format="GIF", save_all=True, append_images=frames[1:], duration=700, loop=0),
    )
    atomic_write(folder / "metrics.png", lambda fh: _metrics_figure(run).savefig(fh, format="png", dpi=80))
    curves = _silhouette_curves(run)
    if curves:
        atomic_write(
            folder / "silhouettes.png", lambda fh: _silhouette_figure(curves).savefig(fh, format="png", dpi=80)
        )
    changes: list[dict[str, Any]] = [
        {"from_epoch": a.epoch, "to_epoch": b.epoch, "moved": group_changes(a, b)}
        for a, b in zip(run.snapshots[:-1], run.snapshots[1:])
    ]
    _write(folder / "changes.json", json.dumps(changes, indent=1))
    pairs = pair_history(run)
    _write(folder / "pairs.json", json.dumps(pairs, indent=1))
    lines = [
        f"# Class-similarity report: {md_escape(str(run.path))}",
        "",
        f"{run.num_classes} classes, {len(run.snapshots)} analysed epochs "
        f"({', '.join(str(s.epoch) for s in run.snapshots)}), scores: {md_escape(str(run.info.get('scores', '?')))}.",
        "",
        "## Structure over epochs",
        "",
        "![metrics](metrics.png)",
        "",
        "| epoch | groups | levels | within - between | cophenetic corr | drift | group ARI |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in run.snapshots:
        m = s.metrics
        levels = " > ".join(str(level.n_groups) for level in s.result.levels)
        lines.append(
            f"| {s.epoch} | {_num(m.get('n_groups'), 0)} | {levels} | {_num(m.get('within_minus_between'))} | "
            f"{_num(m.get('cophenetic_corr'))} | {_num(m.get('drift'))} | {_num(m.get('group_ari'))} |"
        )
    lines += [
        "",
        "## Heatmaps of every epoch, in the last epoch's order",
        "",
        "![heatmaps](heatmaps.png)",
        "",
        "Animated: [evolution.gif](evolution.gif)",
        "",
        "## Classes that changed group",
        "",
    ]
    for change in changes:
        names = [md_escape(m["name"]) for m in change["moved"]]
        shown = ", ".join(names[:30]) + (f", ... (+{len(names) - 30})" if len(names) > 30 else "")
        lines.append(f"- epoch {change['from_epoch']} -> {change['to_epoch']}: {len(names)} moved. {shown}")
    if not changes:
        lines.append("- only one epoch was analysed.")
    lines += ["", "## Pairs worth a look over the epochs", ""]
    if pairs:
        lines += ["| kind | class | with | status | first seen | last seen | in epochs | score |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for e in pairs:
            seen = f"{e['first']} | {e['last']} | {len(e['epochs'])}"
            lines.append(f"| {e['kind'].replace('_', ' ')} | {md_escape(e['a'])} | {md_escape(e['b'])} | "
                         f"{e['status']} | {seen} | {_num(e['score'], 2)} |")  # fmt: skip
    else:
        lines.append("No pair stood out in any epoch.")
    if curves:
        lines += [
            "",
            "## Mean silhouette over the number of groups",
            "",
            "![silhouettes](silhouettes.png)",
            "",
            "Curves that fall with the number of groups (most real classifiers) are why the groups are the tree's "
            'levels by default; `primary="silhouette"` takes each curve\'s highest point instead, and `n_groups` '
            "any cut.",
        ]
    lines += ["", f"## Groups at epoch {last.epoch}", "", final.summary_markdown()]
    _write(folder / "report.md", "\n".join(lines) + "\n")
    report = {
        "run": str(run.path),
        "num_classes": run.num_classes,
        "epochs": [s.epoch for s in run.snapshots],
        "metrics": [{"epoch": s.epoch, **s.result.to_dict()["metrics"]} for s in run.snapshots],
        "changes": changes,
        "pairs": pairs,
        "final_groups": final.to_dict()["groups"],
        "silhouettes": [{"epoch": epoch, **{str(k): v for k, v in curve.items()}} for epoch, curve in curves],
    }
    _write(folder / "report.json", json.dumps(report, indent=1))
    return folder


def _write(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else ""


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))
