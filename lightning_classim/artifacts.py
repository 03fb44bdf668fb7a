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
        heatmap.png                     # the ordered heatmap with group outlines
        summary.json                    # epoch, step, metrics, groups, split and failed groups (written last)
        (vectors.npy)                   # (m, r) float32 class vectors, in place of similarity.npy for a run of
                                        # class embeddings above 4,096 classes (ClassSimilarityCallback(head=...))
      epoch=0003-step=000120-v1/        # a second snapshot at the same epoch and step (never overwritten)

Every file is written to a temporary name, flushed to disk and renamed, so a reader never sees half a file; a folder
without ``summary.json`` is incomplete, and :func:`clean_stale` removes it and any ``.tmp`` file a crash left.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_classim.render import save_png
from lightning_classim.structure import StructureResult

FORMAT_VERSION = 1
_SNAPSHOT = re.compile(r"^epoch=(\d+)-step=(\d+)(?:-v(\d+))?$")
#: The keys of ``summary.json`` that :meth:`StructureResult.to_dict` writes.
_RESULT_KEYS = frozenset(
    (
        "num_classes",
        "n_groups",
        "metrics",
        "groups",
        "split_groups",
        "failed_groups",
        "silhouettes",
        "notes",
        "levels",
        "pairs",
    )
)
_ARRAYS = ("similarity", "order", "linkage", "groups")

__all__ = [
    "FORMAT_VERSION",
    "Snapshot",
    "clean_stale",
    "list_snapshots",
    "load_snapshot",
    "snapshot_dir",
    "write_run_info",
    "write_snapshot",
]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(file)`` into ``path.tmp``, flush it to disk, then rename it to ``path``.

    A reader never sees half a file, and a crash leaves at most a ``.tmp`` file (removed by :func:`clean_stale`).
    On an error (a full disk) the partial ``.tmp`` file is removed and the error raised.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, allow_nan=False).encode()
    _atomic_write(path, lambda fh: fh.write(data))


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    _atomic_write(path, lambda fh: np.save(fh, arr))


def snapshot_dir(save_dir: str | Path, epoch: int, step: int) -> Path:
    """Folder of one epoch's snapshot: ``epoch=0003-step=000120``, or ``...-v1``, ``-v2`` when that one exists.

    An existing snapshot is never overwritten (e.g. two ``trainer.validate()`` calls at one global step).
    """
    base = Path(save_dir) / f"epoch={epoch:04d}-step={step:06d}"
    folder, version = base, 0
    while folder.exists():
        version += 1
        folder = base.with_name(f"{base.name}-v{version}")
    return folder


def clean_stale(save_dir: str | Path) -> list[Path]:
    """Remove what an interrupted writer left in a run folder, and return it.

    That is ``*.tmp`` files, and epoch folders without a ``summary.json`` (written last).
    """
    root = Path(save_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for tmp in root.rglob("*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    for folder in [root, *root.glob("sources/*"), *root.glob("dataloader_idx_*"), *root.glob("test")]:
        for child in folder.iterdir() if folder.is_dir() else ():
            if child.is_dir() and _SNAPSHOT.match(child.name) and not (child / "summary.json").exists():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


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
    """Write one epoch's file set (see the module docstring) in a new folder and return it.

    ``summary.json`` is written last: a folder without it is incomplete (readers skip it). When a write fails (a
    full disk), the new folder is removed and the error raised: nothing partial stays behind.
    """
    folder = snapshot_dir(save_dir, epoch, step)
    folder.mkdir(parents=True)
    try:
        for name, array in result.arrays().items():
            _atomic_npy(folder / f"{name}.npy", array)
        _atomic_json(folder / "class_names.json", list(result.class_names))
        if image is not None:
            png = io.BytesIO()
            save_png(image, png)
            _atomic_write(folder / "heatmap.png", lambda fh: fh.write(png.getvalue()))
        _atomic_json(folder / "summary.json", {"epoch": epoch, "step": step, **(extra or {}), **result.to_dict()})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
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
            found.append((int(match.group(1)), int(match.group(2)), int(match.group(3) or 0), child))
    return [p for *_, p in sorted(found)]


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
        embedded = not (path / "similarity.npy").exists() and (path / "vectors.npy").exists()
        names_of = [("vectors" if name == "similarity" and embedded else name) for name in _ARRAYS]
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in names_of}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, json.JSONDecodeError) as err:
        raise ValueError(f"Corrupt snapshot in {path}: {err}") from err
    if not isinstance(summary, dict) or not isinstance(names, list):
        raise ValueError(
            f"Corrupt snapshot in {path}: summary.json must hold a dict and class_names.json a list, but they hold "
            f"{type(summary).__name__} and {type(names).__name__}."
        )
    try:
        result = StructureResult.from_parts(arrays, summary, names)
    except ValueError as err:
        raise ValueError(f"Corrupt snapshot in {path}: {err}") from err
    extra = {k: v for k, v in summary.items() if k not in _RESULT_KEYS and k not in ("epoch", "step")}
    return Snapshot(path=path, epoch=int(summary.get("epoch", -1)), step=int(summary.get("step", -1)), result=result,
                    extra=extra)  # fmt: skip
