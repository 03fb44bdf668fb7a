"""The on-disk format of a run's per-epoch snapshots, written by the callback and read back by the command line.

Layout of ``save_dir``::

    save_dir/
      run.json                          # format version, num_classes, class names, scores, options
      epoch=0003-step=000120/
        similarity.npy                  # (m, m) float32, original class order
        order.npy                       # (m,) int64 leaf order
        linkage.npy                     # (m - 1, 4) float64 scipy linkage matrix
        groups.npy                      # (m,) int64 flat group label per class (original order)
        class_names.json                # list of m names
        summary.json                    # epoch, step, metrics, groups, split and failed groups
        heatmap.png                     # the ordered heatmap with group outlines

Every file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_classim.render import save_png
from lightning_classim.structure import StructureResult

FORMAT_VERSION = 1
_SNAPSHOT = re.compile(r"^epoch=(\d+)-step=(\d+)$")
#: The keys of ``summary.json`` that :meth:`StructureResult.to_dict` writes.
_RESULT_KEYS = frozenset(
    ("num_classes", "n_groups", "metrics", "groups", "split_groups", "failed_groups", "silhouettes", "notes")
)
_ARRAYS = ("similarity", "order", "linkage", "groups")

__all__ = ["FORMAT_VERSION", "Snapshot", "list_snapshots", "load_snapshot", "write_run_info", "write_snapshot"]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1, allow_nan=False).encode())


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)


def snapshot_dir(save_dir: str | Path, epoch: int, step: int) -> Path:
    """Folder of one epoch's snapshot."""
    return Path(save_dir) / f"epoch={epoch:04d}-step={step:06d}"


def write_run_info(save_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``run.json`` (format version and the callback's settings)."""
    path = Path(save_dir) / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_json(path, {"format_version": FORMAT_VERSION, **info})
    return path


def write_snapshot(
    save_dir: str | Path,
    epoch: int,
    step: int,
    result: StructureResult,
    image: np.ndarray | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one epoch's file set (see the module docstring) and return its folder."""
    folder = snapshot_dir(save_dir, epoch, step)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in result.arrays().items():
        _atomic_npy(folder / f"{name}.npy", array)
    _atomic_json(folder / "class_names.json", list(result.class_names))
    _atomic_json(folder / "summary.json", {"epoch": epoch, "step": step, **(extra or {}), **result.to_dict()})
    if image is not None:
        tmp = folder / "heatmap.png.tmp"
        save_png(image, tmp)
        os.replace(tmp, folder / "heatmap.png")
    return folder


@dataclass(frozen=True)
class Snapshot:
    """One epoch's files, loaded back: where they are, the epoch and step, the result, and what else was saved.

    Attributes:
        path: the snapshot's folder.
        epoch: the epoch.
        step: the global step.
        result: the :class:`~lightning_classim.StructureResult`, as the analysis made it.
        extra: the other keys of ``summary.json`` (e.g. ``source`` and ``constant_classes``).
    """

    path: Path
    epoch: int
    step: int
    result: StructureResult
    extra: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        """The structure scalars of this epoch."""
        return dict(self.result.metrics)


def list_snapshots(save_dir: str | Path) -> list[Path]:
    """The snapshot folders under ``save_dir``, by epoch then step."""
    root = Path(save_dir)
    found = []
    for child in root.iterdir() if root.is_dir() else []:
        match = _SNAPSHOT.match(child.name)
        if match and child.is_dir() and (child / "summary.json").exists():
            found.append((int(match.group(1)), int(match.group(2)), child))
    return [p for _, _, p in sorted(found)]


def load_snapshot(folder: str | Path) -> Snapshot:
    """Load one snapshot folder written by :func:`write_snapshot`.

    Raises:
        FileNotFoundError: if a file of the set is missing.
        ValueError: if a file is corrupt or the files do not agree.
    """
    path = Path(folder)
    try:
        summary = json.loads((path / "summary.json").read_text())
        names = json.loads((path / "class_names.json").read_text())
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, json.JSONDecodeError) as err:
        raise ValueError(f"Corrupt snapshot in {path}: {err}") from err
    if not isinstance(summary, dict) or not isinstance(names, list):
        raise ValueError(f"Corrupt snapshot in {path}: summary.json or class_names.json does not hold what it should.")
    try:
        result = StructureResult.from_parts(arrays, summary, names)
    except ValueError as err:
        raise ValueError(f"Corrupt snapshot in {path}: {err}") from err
    extra = {k: v for k, v in summary.items() if k not in _RESULT_KEYS and k not in ("epoch", "step")}
    return Snapshot(path=path, epoch=int(summary.get("epoch", -1)), step=int(summary.get("step", -1)), result=result,
                    extra=extra)  # fmt: skip
