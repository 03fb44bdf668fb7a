"""The on-disk format of a run's per-epoch snapshots, written by the callback and read back by the command line.

Layout of ``save_dir``::

    save_dir/
      run.json                          # format version, run id, num_classes, class names, scores, options
      .classim.lock                     # held (flock) by the process writing the run
      epoch=0003-step=000120/
        similarity.npy                  # (m, m) float32, original class order
        order.npy                       # (m,) int64 leaf order
        linkage.npy                     # (m - 1, 4) float64 scipy linkage matrix
        groups.npy                      # (m,) int64 flat group label per class (original order)
        class_names.json                # list of m names
        heatmap.png                     # the ordered heatmap with group outlines
        explorer.html                   # the epoch's explorer page (when the callback writes one)
        summary.json                    # epoch, step, run id, metrics, groups, split and failed groups
        (vectors.npy)                   # (m, r) float32 class vectors, in place of similarity.npy for a run of
                                        # class embeddings above 4,096 classes (ClassSimilarityCallback(head=...))
      epoch=0003-step=000120-v1/        # a second snapshot at the same epoch and step (never overwritten)

An epoch's folder is built under a marked temporary name (``.epoch=....classim-<pid>.partial``), every file flushed
to disk, and renamed whole; ``run.json`` is written to a marked temporary name and renamed. So a reader never sees
half an epoch, and :func:`clean_stale` removes only this package's leftovers of processes that no longer run.
Reading treats every file as untrusted (:mod:`lightning_classim._files`): regular files only, sizes checked first.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from lightning_classim._files import (
    UnsafeFile,
    atomic_write,
    fsync_dir,
    partial_name,
    read_json,
    read_npy,
    remove_leftovers,
    safe_dirs,
    write_synced,
)
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
    "snapshot_epoch",
    "write_run_info",
    "write_snapshot",
]


def _atomic_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, allow_nan=False).encode()
    atomic_write(path, data)


def _save_npy(array: np.ndarray, fh: IO[bytes]) -> None:
    np.save(fh, array, allow_pickle=False)


def snapshot_dir(save_dir: str | Path, epoch: int, step: int) -> Path:
    """Folder of one epoch's snapshot: ``epoch=0003-step=000120``, or ``...-v1``, ``-v2`` when that one exists.

    An existing snapshot is never overwritten (e.g. two ``trainer.validate()`` calls at one global step).
    """
    base = Path(save_dir) / f"epoch={epoch:04d}-step={step:06d}"
    folder, version = base, 0
    while os.path.lexists(folder):
        version += 1
        folder = base.with_name(f"{base.name}-v{version}")
    return folder


def run_folders(save_dir: str | Path) -> list[Path]:
    """The folders of a run that this package writes into (symbolic links excluded).

    They are ``save_dir``, ``test/``, ``dataloader_idx_N/`` below them, and ``sources/<tag>/`` below each.
    """
    root = Path(save_dir)
    stages = ([root] if root.is_dir() else []) + safe_dirs([root / "test"])  # the run folder itself may be a link
    loaders = stages + safe_dirs(p for stage in stages for p in sorted(stage.glob("dataloader_idx_*")))
    return loaders + safe_dirs(p for folder in loaders for p in sorted(folder.glob("sources/*")))


def clean_stale(save_dir: str | Path) -> list[Path]:
    """Remove what an interrupted writer of this package left in a run folder, and return it.

    Only this package's marked temporary names (``.x.classim-<pid>.tmp`` files and ``.epoch=....classim-<pid>.partial``
    folders) of processes that no longer run, and only at the depths it writes (:func:`run_folders`). A user's files,
    folders of any other name, and a live process's work are never touched. Call it while holding the run's
    :class:`~lightning_classim._files.RunLock`.
    """
    return remove_leftovers(run_folders(save_dir))


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
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write one epoch's file set (see the module docstring) in a new folder and return it.

    The folder is built under a marked temporary name (every file flushed to disk, ``summary.json`` last) and
    renamed whole: a reader sees the whole epoch or none of it. When a write fails (a full disk), the temporary
    folder is removed and the error raised: nothing partial stays behind.

    Args:
        save_dir: the run folder.
        epoch: the epoch.
        step: the global step.
        result: the analysis.
        image: the picture (``heatmap.png``), or ``None``.
        extra: more keys for ``summary.json``.
        files: more files of the epoch (e.g. ``{"explorer.html": page}``), written before ``summary.json``.
    """
    folder = snapshot_dir(save_dir, epoch, step)
    staging = partial_name(folder)
    staging.mkdir(parents=True)
    try:
        for name, array in result.arrays().items():
            write_synced(staging / f"{name}.npy", functools.partial(_save_npy, array))  # straight to the file
        write_synced(staging / "class_names.json", json.dumps(list(result.class_names), allow_nan=False).encode())
        if image is not None:
            png = io.BytesIO()
            save_png(image, png)
            write_synced(staging / "heatmap.png", png.getvalue())
        for name, content in (files or {}).items():
            write_synced(staging / name, content.encode("utf-8") if isinstance(content, str) else content)
        summary = {"epoch": epoch, "step": step, **(extra or {}), **result.to_dict()}
        write_synced(staging / "summary.json", json.dumps(summary, indent=1, allow_nan=False).encode())
        fsync_dir(staging)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(folder.parent)
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


def snapshot_epoch(folder: Path) -> int:
    """The epoch in a snapshot folder's name (``epoch=10000-step=...`` is 10000); -1 for another name."""
    match = _SNAPSHOT.match(folder.name)
    return int(match.group(1)) if match else -1


def list_snapshots(save_dir: str | Path) -> list[Path]:
    """The snapshot folders under ``save_dir``, by epoch then step (real folders holding a ``summary.json``)."""
    root = Path(save_dir)
    found = []
    for child in root.iterdir() if root.is_dir() else []:  # the folder named may be a link; its epochs may not
        match = _SNAPSHOT.match(child.name)
        if match and child.is_dir() and not child.is_symlink() and (child / "summary.json").is_file():
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
        summary = read_json(path / "summary.json")
        names = read_json(path / "class_names.json")
        embedded = not (path / "similarity.npy").exists() and (path / "vectors.npy").exists()
        names_of = [("vectors" if name == "similarity" and embedded else name) for name in _ARRAYS]
        arrays = {name: read_npy(path / f"{name}.npy") for name in names_of}
    except FileNotFoundError:
        raise
    except (UnsafeFile, OSError) as err:
        raise ValueError(f"Corrupt snapshot in {path}: {err}") from err
    if not isinstance(summary, dict) or not isinstance(names, list):
        raise ValueError(
            f"Corrupt snapshot in {path}: summary.json must hold a dict and class_names.json a list, but they hold "
            f"{type(summary).__name__} and {type(names).__name__}."
        )
    epoch, step = summary.get("epoch", -1), summary.get("step", -1)
    if type(epoch) is not int or type(step) is not int:
        raise ValueError(f"Corrupt snapshot in {path}: its epoch and step must be integers, but are {epoch!r:.40} "
                         f"and {step!r:.40}.")  # fmt: skip
    try:
        result = StructureResult.from_parts(arrays, summary, names)
    except ValueError as err:
        raise ValueError(f"Corrupt snapshot in {path}: {err}") from err
    extra = {k: v for k, v in summary.items() if k not in _RESULT_KEYS and k not in ("epoch", "step")}
    return Snapshot(path=path, epoch=epoch, step=step, result=result, extra=extra)
