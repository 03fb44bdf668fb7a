"""Reading runs back from disk, and what the ``classim report / compare / export`` commands compute.

A *run folder* is a callback's ``save_dir`` (it holds ``run.json`` and one ``epoch=...-step=...`` folder per
analysed epoch, see :mod:`lightning_classim.artifacts`). Any folder that holds exactly one run folder below it
(e.g. a TensorBoard ``version_0`` folder) is accepted too. Nothing here writes into a run folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_classim._files import read_json
from lightning_classim.artifacts import Snapshot, list_snapshots, load_snapshot
from lightning_classim.render import grid_image, render_heatmap, save_png
from lightning_classim.structure import StructureResult, agreement, nearest_classes

__all__ = [
    "Run",
    "RunError",
    "RunWarning",
    "compare_runs",
    "compare_table",
    "export_tree",
    "find_run",
    "load_run",
    "read_run_info",
    "reference_order",
    "run_folders_below",
]


class RunError(Exception):
    """A run folder that cannot be used (missing, empty, corrupt, or incompatible with another run)."""


class RunWarning(UserWarning):
    """Part of a run could not be read and was skipped (e.g. one corrupt epoch folder)."""


@dataclass(frozen=True)
class Run:
    """A run folder and its snapshots, oldest first."""

    path: Path
    info: dict[str, Any]
    snapshots: tuple[Snapshot, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.snapshots[-1].result.num_classes

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


def run_folders_below(root: Path, most: int = 10_000) -> list[Path]:
    """Folders below ``root`` that hold a ``run.json`` (symbolic links not followed), at most ``most`` folders seen."""
    found, seen = [], 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        seen += 1
        if seen > most:
            break
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "run.json" in files:
            found.append(Path(folder))
    return sorted(found)


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
    found = run_folders_below(root)
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunError(
            f"{root} holds no lightning_classim run (no run.json and no epoch=... folders). Pass the callback's "
            "save_dir, by default <log_dir>/classim."
        )
    listing = "\n  ".join(str(p) for p in found)
    raise RunError(f"{root} holds {len(found)} runs; pass one of them:\n  {listing}")


def read_run_info(folder: Path, num_classes: int | None = None) -> dict[str, Any]:
    """A run's ``run.json`` as a dict, its values checked (a damaged value is dropped with a :class:`RunWarning`).

    Raises:
        RunError: if the file is there but is not a JSON object.
    """
    path = folder / "run.json"
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        info = read_json(path, 64 * 2**20)
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is corrupt: {err}") from None
    if not isinstance(info, dict):
        raise RunError(f"{path} is corrupt: it holds a {type(info).__name__}, not a JSON object.")
    checks = {
        "run_id": lambda v: isinstance(v, str),
        "reference": lambda v: v is None or isinstance(v, str),
        "num_classes": lambda v: type(v) is int and v > 0,
        "taxonomy": lambda v: v is None or _is_taxonomy(v, num_classes),
    }
    for key, ok in checks.items():
        if key in info and not ok(info[key]):
            warnings.warn(f"{path}: ignored the damaged value of {key!r}", RunWarning, stacklevel=3)
            del info[key]
    return info


def _tree_damage(z: np.ndarray, info: dict[str, Any]) -> str:
    """What is wrong with a loaded tree: negative heights, or merges below their parts.

    Only centroid and median linkage make such inversions; for the other methods they are damage.
    """
    if z.size and z[:, 2].min() < 0:
        return "its tree has negative heights"
    analysis = info.get("analysis")
    method = analysis.get("method") if isinstance(analysis, dict) else None
    if method in ("centroid", "median") or not z.size:
        return ""
    m = z.shape[0] + 1
    height = np.concatenate([np.zeros(m), z[:, 2]])
    kids = z[:, :2].astype(np.intp)
    if (z[:, 2] < np.maximum(height[kids[:, 0]], height[kids[:, 1]]) - 1e-7).any():
        return "its tree merges clusters below their own merges"
    return ""


def _is_taxonomy(levels: Any, m: int | None) -> bool:
    """Integer labels per class, one list per level (coarsest first), each of ``m`` labels in ``0..m - 1``."""
    if not isinstance(levels, list) or not levels or len(levels) > 64:
        return False
    for level in levels:
        if not isinstance(level, list) or (m is not None and len(level) != m) or not level:
            return False
        if not all(type(v) is int and 0 <= v < len(level) for v in level):
            return False
    return True


def load_run(path: str | Path) -> Run:
    """Load a run folder (or the only run below ``path``).

    Every file is read as untrusted input: a damaged epoch is skipped with a :class:`RunWarning`, and so is an epoch
    of another run (its ``summary.json`` names another run id than ``run.json``).

    Raises:
        RunError: if it is missing, empty, corrupt, or its epochs disagree on the number of classes.
    """
    folder = find_run(path)
    info = read_run_info(folder)
    paths = list_snapshots(folder)
    if not paths:
        raise RunError(f"{folder} is a run with no analysed epoch yet (no epoch=... folders).")
    snaps = []
    for p in paths:
        try:
            snap = load_snapshot(p)
        except (OSError, ValueError) as err:  # one bad epoch does not block the others
            warnings.warn(f"skipped {p}: it is corrupt or incomplete ({err})", RunWarning, stacklevel=2)
            continue
        damage = _tree_damage(snap.result.linkage, info)
        if damage:
            warnings.warn(f"skipped {p}: it is corrupt ({damage})", RunWarning, stacklevel=2)
            continue
        other = snap.extra.get("run_id")
        if "run_id" in info and other is not None and other != info["run_id"]:
            warnings.warn(f"skipped {p}: it belongs to another run ({str(other)[:40]}) than {folder / 'run.json'} "
                          f"({info['run_id']})", RunWarning, stacklevel=2)  # fmt: skip
            continue
        snaps.append(snap)
    if not snaps:
        raise RunError(f"{folder} holds no readable epoch: all {len(paths)} epoch folders are corrupt or incomplete.")
    sizes = {s.result.num_classes for s in snaps}
    if len(sizes) != 1:
        raise RunError(f"{folder} mixes epochs with different numbers of classes: {sorted(sizes)}.")
    if info.get("taxonomy") is not None and not _is_taxonomy(info["taxonomy"], snaps[-1].result.num_classes):
        warnings.warn(f"{folder / 'run.json'}: ignored a taxonomy that does not fit its {sizes.pop()} classes",
                      RunWarning, stacklevel=2)  # fmt: skip
        del info["taxonomy"]
    return Run(path=folder, info=info, snapshots=tuple(snaps))


def reference_order(reference: Any, num_classes: int | None = None) -> np.ndarray:
    """An order to share between runs: an order array, or a run folder (its last epoch's order).

    Raises:
        RunError: if the folder cannot be read, or the order does not fit ``num_classes``.
    """
    if isinstance(reference, (str, Path)):
        order = load_run(reference).snapshots[-1].result.order
    else:
        order = np.asarray(reference)
    if num_classes is not None and (order.ndim != 1 or order.shape[0] != num_classes):
        raise RunError(
            f"The reference order covers {order.shape[0] if order.ndim == 1 else order.shape} classes, but this run "
            f"has {num_classes}."
        )
    return order.astype(np.intp)


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
    m = snaps[0].result.num_classes
    for r, s in zip(runs, snaps):
        if s.result.num_classes != m:
            raise RunError(
                f"Runs with different numbers of classes cannot be compared: {runs[0].path} has {m}, {r.path} has "
                f"{s.result.num_classes}."
            )
    base = snaps[0].result
    names = base.class_names
    k = min(neighbours, m - 1)
    results = []
    for run, snap in zip(runs[1:], snaps[1:]):
        nn_a = _neighbours(base, k)
        nn_b = _neighbours(snap.result, k)
        overlap = np.array([len(set(nn_a[i]) & set(nn_b[i])) / k for i in range(m)])
        worst = np.argsort(overlap, kind="stable")[:10]
        results.append(
            {
                "run": str(run.path),
                "epoch": snap.epoch,
                "same_class_names": snap.result.class_names == names,
                **agreement(base, snap.result),
                "neighbour_overlap_mean": float(overlap.mean()),
                "most_changed_neighbours": [
                    {
                        "class": int(i),
                        "name": names[i],
                        "overlap": float(overlap[i]),
                        "neighbours_first": [names[j] for j in nn_a[i]],
                        "neighbours_this": [names[j] for j in nn_b[i]],
                    }
                    for i in worst
                ],
            }
        )
    report: dict[str, Any] = {
        "first": {"run": str(runs[0].path), "epoch": snaps[0].epoch},
        "num_classes": m,
        "neighbours": k,
        "comparisons": results,
    }
    if out is not None:
        images = [render_heatmap(s.result if s.result.embedded else s.result.similarity, base.order, base.groups,
                                 max_pixels=512, min_pixels=256) for s in snaps]  # fmt: skip
        labels = [f"{r.path.name if r.path.name != 'classim' else r.path.parent.name} (epoch {s.epoch})"
                  for r, s in zip(runs, snaps)]  # fmt: skip
        report["png"] = str(save_png(grid_image(images, labels, cols=len(images)), out))
    return report


def _neighbours(result: StructureResult, k: int) -> np.ndarray:
    """Each class's ``k`` nearest classes (from the class vectors of an embedded result: exact up to 20,000)."""
    if result.embedded and result.vectors is not None:
        return nearest_classes(result.vectors, k)[0]
    s = result.similarity.astype(np.float64).copy()
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
    z = snap.result.linkage
    m = z.shape[0] + 1
    names = snap.result.class_names
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
        la, lb = max(h - height[a], 0.0), max(h - height[b], 0.0)  # centroid/median inversions: no negative length
        text.append(f"({text[a]}:{la:.6g},{text[b]}:{lb:.6g})")
        text[a] = text[b] = ""  # free memory: each subtree is used once
    return text[-1] + ";"


def _newick_name(name: str) -> str:
    """A Newick label: bare when it is safe, else quoted (``'`` doubled; line breaks become spaces)."""
    if name and all(c.isalnum() or c in "_-./" for c in name):
        return name
    flat = " ".join(name.splitlines()) if name else name
    return "'" + flat.replace("'", "''") + "'"
