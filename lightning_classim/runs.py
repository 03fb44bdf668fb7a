"""Reading runs back from disk, and what the ``classim report / compare / export`` commands compute.

A *run folder* is a callback's ``save_dir`` (it holds ``run.json`` and one ``epoch=...-step=...`` folder per
analysed epoch, see :mod:`lightning_classim.artifacts`). Any folder that holds exactly one run folder below it
(e.g. a TensorBoard ``version_0`` folder) is accepted too. Nothing here writes into a run folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cophenet
from scipy.optimize import linear_sum_assignment

from lightning_classim.analysis import _condensed, _pearson, adjusted_rand_index
from lightning_classim.artifacts import Snapshot, list_snapshots, load_snapshot
from lightning_classim.render import render_heatmap, save_png

__all__ = [
    "RunError",
    "compare_runs",
    "export_tree",
    "find_run",
    "group_changes",
    "load_run",
    "reference_order",
    "write_report",
]


class RunError(Exception):
    """A run folder that cannot be used (missing, empty, corrupt, or incompatible with another run)."""


@dataclass(frozen=True)
class Run:
    """A run folder and its snapshots, oldest first."""

    path: Path
    info: dict[str, Any]
    snapshots: tuple[Snapshot, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.snapshots[-1].similarity.shape[0])

    def at_epoch(self, epoch: int | None) -> Snapshot:
        """The snapshot of ``epoch`` (the last one if ``None``).

        Raises:
            RunError: if the run has no snapshot of that epoch.
        """
        if epoch is None:
            return self.snapshots[-1]
        for snap in reversed(self.snapshots):
            if snap.epoch == epoch:
                return snap
        raise RunError(
            f"{self.path} has no snapshot of epoch {epoch}; its epochs are {[s.epoch for s in self.snapshots]}."
        )


def find_run(path: str | Path) -> Path:
    """The run folder at or below ``path``.

    Raises:
        RunError: if ``path`` does not exist, holds no run, or holds several.
    """
    root = Path(path)
    if not root.exists():
        raise RunError(f"{root} does not exist.")
    if not root.is_dir():
        raise RunError(f"{root} is not a folder.")
    if (root / "run.json").exists() or list_snapshots(root):
        return root
    found = sorted({p.parent for p in root.rglob("run.json")})
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunError(
            f"{root} holds no lightning_classim run (no run.json and no epoch=... folders). Pass the callback's "
            "save_dir, by default <log_dir>/classim."
        )
    listing = "\n  ".join(str(p) for p in found)
    raise RunError(f"{root} holds {len(found)} runs; pass one of them:\n  {listing}")


def load_run(path: str | Path) -> Run:
    """Load a run folder (or the only run below ``path``).

    Raises:
        RunError: if it is missing, empty, corrupt, or its epochs disagree on the number of classes.
    """
    folder = find_run(path)
    info: dict[str, Any] = {}
    if (folder / "run.json").exists():
        try:
            info = json.loads((folder / "run.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{folder / 'run.json'} is corrupt: {err}") from None
    paths = list_snapshots(folder)
    if not paths:
        raise RunError(f"{folder} is a run with no analysed epoch yet (no epoch=... folders).")
    snaps = []
    for p in paths:
        try:
            snaps.append(load_snapshot(p))
        except (OSError, ValueError) as err:
            raise RunError(f"{p} is corrupt or incomplete: {err}") from None
    sizes = {s.similarity.shape[0] for s in snaps}
    if len(sizes) != 1:
        raise RunError(f"{folder} mixes epochs with different numbers of classes: {sorted(sizes)}.")
    return Run(path=folder, info=info, snapshots=tuple(snaps))


def reference_order(reference: Any, num_classes: int | None = None) -> np.ndarray:
    """An order to share between runs: an order array, or a run folder (its last epoch's order).

    Raises:
        RunError: if the folder cannot be read, or the order does not fit ``num_classes``.
    """
    if isinstance(reference, (str, Path)):
        order = load_run(reference).snapshots[-1].order
    else:
        order = np.asarray(reference)
    if num_classes is not None and (order.ndim != 1 or order.shape[0] != num_classes):
        raise RunError(
            f"The reference order covers {order.shape[0] if order.ndim == 1 else order.shape} classes, but this run "
            f"has {num_classes}."
        )
    return order.astype(np.intp)


# ----------------------------------------------------------------------------------------------- report


def group_changes(before: Snapshot, after: Snapshot) -> list[dict[str, Any]]:
    """Classes that changed group between two epochs.

    Groups are renumbered every epoch, so the groups of ``after`` are first matched to those of ``before`` by
    largest overlap (a linear assignment on the contingency table); a class changed group when its group in
    ``after`` is not matched to its group in ``before``.

    Returns:
        One dict per moved class: ``class``, ``name``, ``from_group``, ``to_group`` (groups as numbered in each
        epoch).
    """
    a, b = before.groups, after.groups
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    rows, cols = linear_sum_assignment(-table)
    match = dict(zip(cols.tolist(), rows.tolist()))
    moved = []
    for i in range(len(a)):
        if match.get(int(b[i])) != int(a[i]):
            moved.append({"class": i, "name": after.class_names[i], "from_group": int(a[i]), "to_group": int(b[i])})
    return moved


def _metrics_figure(run: Run) -> Any:
    from matplotlib.figure import Figure

    keys = [
        k
        for k in ("n_groups", "within_minus_between", "cophenetic_corr", "drift", "group_ari", "offdiag_skew",
                  "taxonomy_ari", "taxonomy_tree_corr")
        if any(k in s.metrics and s.metrics[k] is not None for s in run.snapshots)
    ]  # fmt: skip
    cols = 2
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(10, 2.6 * rows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = [(s.epoch, s.metrics[key]) for s in run.snapshots if s.metrics.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return fig


def _silhouette_curves(run: Run, most: int = 6) -> list[tuple[int, dict[int, float]]]:
    """The mean silhouette over the number of groups of up to ``most`` evenly spaced epochs (those that have one)."""
    curves = []
    for s in run.snapshots:
        curve = {int(k): float(v) for k, v in s.summary.get("silhouettes", {}).items() if v is not None}
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


def _grid(images: list[np.ndarray], labels: list[str], cols: int) -> np.ndarray:
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


def write_report(path: str | Path, out: str | Path | None = None, max_pixels: int = 384) -> Path:
    """Write a report of one run: scalars over epochs, all heatmaps in one order (grid and GIF), group changes.

    Files (in ``out``, default ``<run>/report``): ``report.md`` (open this), ``metrics.png``, ``heatmaps.png``,
    ``evolution.gif``, ``changes.json``, ``report.json`` and, when the automatic choice chose the groups,
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
    order = last.order
    images = [render_heatmap(s.similarity, order, last.groups, max_pixels=max_pixels, min_pixels=max_pixels // 2)
              for s in run.snapshots]  # fmt: skip
    labels = [f"epoch {s.epoch}" for s in run.snapshots]
    save_png(_grid(images, labels, cols=min(4, len(images))), folder / "heatmaps.png")
    frames = [Image.fromarray(img) for img in images]
    frames[0].save(folder / "evolution.gif", save_all=True, append_images=frames[1:], duration=700, loop=0)
    fig = _metrics_figure(run)
    fig.savefig(folder / "metrics.png", dpi=80)
    curves = _silhouette_curves(run)
    if curves:
        _silhouette_figure(curves).savefig(folder / "silhouettes.png", dpi=80)
    changes: list[dict[str, Any]] = [
        {"from_epoch": a.epoch, "to_epoch": b.epoch, "moved": group_changes(a, b)}
        for a, b in zip(run.snapshots[:-1], run.snapshots[1:])
    ]
    (folder / "changes.json").write_text(json.dumps(changes, indent=1))
    summary = last.summary
    lines = [
        f"# Class-similarity report: {run.path}",
        "",
        f"{run.num_classes} classes, {len(run.snapshots)} analysed epochs "
        f"({', '.join(str(s.epoch) for s in run.snapshots)}), scores: {run.info.get('scores', '?')}.",
        "",
        "## Structure over epochs",
        "",
        "![metrics](metrics.png)",
        "",
        "| epoch | groups | within - between | cophenetic corr | drift | group ARI |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in run.snapshots:
        m = s.metrics
        lines.append(
            f"| {s.epoch} | {_num(m.get('n_groups'), 0)} | {_num(m.get('within_minus_between'))} | "
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
        names = [m["name"] for m in change["moved"]]
        shown = ", ".join(names[:30]) + (f", ... (+{len(names) - 30})" if len(names) > 30 else "")
        lines.append(f"- epoch {change['from_epoch']} -> {change['to_epoch']}: {len(names)} moved. {shown}")
    if not changes:
        lines.append("- only one epoch was analysed.")
    if curves:
        lines += [
            "",
            "## Mean silhouette over the number of groups",
            "",
            "![silhouettes](silhouettes.png)",
            "",
            "The automatic choice is each curve's highest point; other peaks are other levels of the hierarchy, "
            "to pick with `n_groups`.",
        ]
    lines += ["", f"## Groups at epoch {last.epoch}", "", _groups_markdown(summary)]
    lines += [f"\nNote: {note}" for note in summary.get("notes", [])]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    report = {
        "run": str(run.path),
        "num_classes": run.num_classes,
        "epochs": [s.epoch for s in run.snapshots],
        "metrics": [{"epoch": s.epoch, **s.metrics} for s in run.snapshots],
        "changes": changes,
        "final_groups": summary.get("groups", []),
        "silhouettes": [{"epoch": epoch, **{str(k): v for k, v in curve.items()}} for epoch, curve in curves],
    }
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    return folder


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{float(value):.{digits}f}"


def _groups_markdown(summary: dict[str, Any], max_members: int = 15) -> str:
    lines = [
        "| group | size | cohesion | separation | nearest | members |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for g in summary.get("groups", []):
        names = g["names"][:max_members]
        more = f", ... (+{g['size'] - max_members})" if g["size"] > max_members else ""
        lines.append(
            f"| {g['group']} | {g['size']} | {_num(g['cohesion'], 2)} | {_num(g['separation'], 2)} | "
            f"{'' if g['nearest'] is None else g['nearest']} | {', '.join(names)}{more} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- compare


def compare_runs(
    paths: Sequence[str | Path], epoch: int | None = None, out: str | Path | None = None, neighbours: int = 5
) -> dict[str, Any]:
    """Compare the class structure of runs, each against the first.

    Args:
        paths: two run folders or more.
        epoch: the epoch to compare (default: each run's last).
        out: where to write the side-by-side heatmaps in the first run's order (PNG); ``None`` writes none.
        neighbours: size of the nearest-neighbour sets compared per class.

    Returns:
        A JSON-ready dict: for each other run, ``matrix_corr`` (correlation of off-diagonal values),
        ``group_ari``, ``cophenetic_corr`` (correlation of the two trees' cophenetic distances), and the classes
        whose ``neighbours`` nearest neighbours overlap least.

    Raises:
        RunError: for fewer than two runs, unreadable runs, a missing epoch, or different numbers of classes.
    """
    if len(paths) < 2:
        raise RunError(f"compare needs two runs or more, but got {len(paths)}.")
    runs = [load_run(p) for p in paths]
    snaps = [r.at_epoch(epoch) for r in runs]
    m = snaps[0].similarity.shape[0]
    for r, s in zip(runs, snaps):
        if s.similarity.shape[0] != m:
            raise RunError(
                f"Runs with different numbers of classes cannot be compared: {runs[0].path} has {m}, {r.path} has "
                f"{s.similarity.shape[0]}."
            )
    base = snaps[0]
    k = min(neighbours, m - 1)
    results = []
    for run, snap in zip(runs[1:], snaps[1:]):
        names_match = snap.class_names == base.class_names
        nn_a = _neighbours(base.similarity, k)
        nn_b = _neighbours(snap.similarity, k)
        overlap = np.array([len(set(nn_a[i]) & set(nn_b[i])) / k for i in range(m)])
        worst = np.argsort(overlap, kind="stable")[:10]
        results.append(
            {
                "run": str(run.path),
                "epoch": snap.epoch,
                "same_class_names": names_match,
                "matrix_corr": _pearson(
                    _condensed(base.similarity.astype(np.float64)), _condensed(snap.similarity.astype(np.float64))
                ),
                "group_ari": adjusted_rand_index(base.groups, snap.groups),
                "cophenetic_corr": _pearson(cophenet(base.linkage), cophenet(snap.linkage)),
                "neighbour_overlap_mean": float(overlap.mean()),
                "most_changed_neighbours": [
                    {
                        "class": int(i),
                        "name": base.class_names[i],
                        "overlap": float(overlap[i]),
                        "neighbours_first": [base.class_names[j] for j in nn_a[i]],
                        "neighbours_this": [base.class_names[j] for j in nn_b[i]],
                    }
                    for i in worst
                ],
            }
        )
    report: dict[str, Any] = {
        "first": {"run": str(runs[0].path), "epoch": base.epoch},
        "num_classes": m,
        "neighbours": k,
        "comparisons": results,
    }
    if out is not None:
        images = [render_heatmap(s.similarity, base.order, base.groups, max_pixels=512, min_pixels=256) for s in snaps]
        labels = [f"{r.path.name if r.path.name != 'classim' else r.path.parent.name} (epoch {s.epoch})"
                  for r, s in zip(runs, snaps)]  # fmt: skip
        report["png"] = str(save_png(_grid(images, labels, cols=len(images)), out))
    return report


def _neighbours(sim: np.ndarray, k: int) -> np.ndarray:
    s = sim.astype(np.float64).copy()
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def compare_table(report: dict[str, Any]) -> str:
    """The comparison as a text table (what ``classim compare`` prints)."""
    lines = [
        f"first run: {report['first']['run']} (epoch {report['first']['epoch']}), {report['num_classes']} classes",
        "",
        f"{'run':<50} {'epoch':>5} {'matrix corr':>11} {'group ARI':>9} {'coph corr':>9} {'nn overlap':>10}",
    ]
    for c in report["comparisons"]:
        run = c["run"] if len(c["run"]) <= 50 else "..." + c["run"][-47:]
        lines.append(
            f"{run:<50} {c['epoch']:>5} {c['matrix_corr']:>11.4f} {c['group_ari']:>9.4f} "
            f"{c['cophenetic_corr']:>9.4f} {c['neighbour_overlap_mean']:>10.3f}"
        )
    for c in report["comparisons"]:
        if not c["same_class_names"]:
            lines.append(f"\nwarning: {c['run']} names its classes differently; compared by index.")
        lines.append(f"\nclasses whose {report['neighbours']} nearest neighbours differ most ({c['run']}):")
        for item in c["most_changed_neighbours"][:5]:
            lines.append(
                f"  {item['name']}: overlap {item['overlap']:.2f}; first: {', '.join(item['neighbours_first'])}; "
                f"this: {', '.join(item['neighbours_this'])}"
            )
    if "png" in report:
        lines.append(f"\nside-by-side heatmaps (first run's order): {report['png']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- export


def export_tree(path: str | Path, fmt: str = "json", epoch: int | None = None) -> str:
    """The learned class hierarchy of a run as JSON or Newick text, with class names as leaves.

    JSON is a flat node list, readable at any depth (a nested tree of thousands of levels would break recursive
    JSON readers): ``{"format": "lightning_classim.tree/1", "num_classes": m, "root": id, "nodes": [...]}``;
    nodes ``0..m-1`` are the classes ``{"id", "name", "class", "height": 0}``, node ``m + i`` is the i-th merge
    ``{"id", "children": [id, id], "height", "size"}`` (scipy's linkage numbering; height is the merge distance).
    Newick: nested parentheses, branch lengths are height differences, names quoted where needed. Both are built
    without recursion.

    Raises:
        RunError: for an unreadable run, a missing epoch or an unknown format.
    """
    if fmt not in ("json", "newick"):
        raise RunError(f"Unknown export format {fmt!r}; use 'json' or 'newick'.")
    snap = load_run(path).at_epoch(epoch)
    z = snap.linkage
    m = z.shape[0] + 1
    names = snap.class_names
    height = np.concatenate([np.zeros(m), z[:, 2]])
    if fmt == "json":
        nodes: list[dict[str, Any]] = [{"id": i, "name": names[i], "class": i, "height": 0.0} for i in range(m)]
        for i, (a, b, h, n) in enumerate(z):
            nodes.append({"id": m + i, "children": [int(a), int(b)], "height": float(h), "size": int(n)})
        tree = {"format": "lightning_classim.tree/1", "num_classes": m, "root": len(nodes) - 1, "nodes": nodes}
        return json.dumps(tree, indent=None)
    text: list[str] = []
    for i in range(m):
        text.append(_newick_name(names[i]))
    for a_f, b_f, h, _ in z:
        a, b = int(a_f), int(b_f)
        la, lb = h - height[a], h - height[b]
        text.append(f"({text[a]}:{la:.6g},{text[b]}:{lb:.6g})")
        text[a] = text[b] = ""  # free memory: each subtree is used once
    return text[-1] + ";"


def _newick_name(name: str) -> str:
    if name and all(c.isalnum() or c in "_-./" for c in name):
        return name
    return "'" + name.replace("'", "''") + "'"
