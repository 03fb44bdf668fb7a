"""The callback's run folder: one folder per run, held by one process, never mixed with another run.

* :func:`default_save_dir`: ``<log_dir>/<tag_prefix>`` under a logger with version folders (TensorBoard, CSV);
  under the others (W&B, MLflow, Comet, DVCLive, ...), ``<default_root_dir>/<tag_prefix>/<the tracker's run id>``,
  so that two runs from one directory never share a folder.
* :class:`RunFolder`: at ``setup`` (rank 0) it takes the folder's lock, proves it writable and removes this
  package's leftovers of dead processes; once the checkpoint (if any) is restored, :meth:`RunFolder.claim` refuses a
  folder that holds another run's epochs, and writes ``run.json`` with the run's id. The epochs carry that id too.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

from lightning_classim._files import RunBusy, RunLock
from lightning_classim._lightning import logger_classes
from lightning_classim.artifacts import clean_stale, list_snapshots, run_folders, write_run_info
from lightning_classim.runs import RunError, read_run_info

__all__ = ["RunFolder", "default_save_dir"]


def default_save_dir(trainer: Any, tag_prefix: str, log_dir: str | None) -> Path:
    """Where a run's files go when the callback has no ``save_dir`` (see the module docstring).

    ``log_dir`` is ``trainer.log_dir`` (asked by every process: it is collective under DDP).
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    versioned = tuple(logger_classes("TensorBoardLogger") + logger_classes("CSVLogger"))
    if logger is None or isinstance(logger, versioned):
        return Path(log_dir or trainer.default_root_dir) / tag_prefix
    version = None
    if trainer.is_global_zero:  # other processes never write; a tracker's run exists on rank 0 only
        try:
            _ = logger.experiment  # the tracker's run exists from here on (W&B names it only then)
            version = logger.version
        except Exception:  # a tracker that cannot say: a run of our own
            version = None
    if isinstance(version, int):
        name = f"version_{version}"
    elif isinstance(version, str) and version.strip():
        name = re.sub(r"[^A-Za-z0-9._-]", "_", version.strip())[:80].lstrip(".") or "run"
    else:
        name = time.strftime("run-%Y%m%d-%H%M%S")
    return Path(trainer.default_root_dir) / tag_prefix / name


class RunFolder:
    """One run's folder, held by this process while a Trainer runs (see the module docstring).

    Attributes:
        path: the folder.
        run_id: the run's id, in ``run.json`` and every epoch's ``summary.json``.
        resumed_id: the run id of a restored checkpoint: a folder of that run is continued, not refused.
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self.run_id: str | None = None
        self.resumed_id: str | None = None
        self.claimed = False
        self._lock: RunLock | None = None

    def open(self, path: Path) -> tuple[str, list[Path]]:
        """Hold ``path`` (rank 0, at ``setup``): ``("", removed leftovers)``, or ``(why not, [])``."""
        if self._lock is not None and self._lock.held and self.path == path:
            return "", []
        self.close()
        self.path = path
        lock = RunLock(path)
        try:
            lock.acquire()
        except RunBusy as err:
            return (
                f"{path} is being written by another run ({err}). Two runs never share a folder: give this one a "
                "`save_dir` of its own (or another `tag_prefix`), or wait for the other to end."
            ), []
        except OSError as err:
            return (
                f"Expected argument `save_dir` to be a folder this process can write, but {path} cannot be created "
                f"or written ({type(err).__name__}: {err.strerror or err}). Pass a writable `save_dir=...`."
            ), []
        self._lock = lock
        return "", clean_stale(path)

    def claim(self, infos: dict[str, dict[str, Any]]) -> str:
        """Make the folder this run's (rank 0, before the first step): ``""``, or why it cannot be.

        ``infos`` maps a folder relative to the run folder (``""``, ``"sources/<tag>"``) to its ``run.json``
        contents (the run id is added). A folder that holds epochs of another run (another id, or none) is refused;
        one of this run (or of the run a checkpoint resumed) is continued.
        """
        assert self.path is not None
        if self.claimed:
            return ""
        try:
            theirs = read_run_info(self.path).get("run_id")
        except RunError:
            theirs = None
        if theirs is not None and theirs in (self.run_id, self.resumed_id):
            self.run_id = theirs
        elif any(list_snapshots(folder) for folder in run_folders(self.path)):
            return (
                f"{self.path} already holds the epochs of another run{f' ({theirs})' if theirs else ''}; this run's "
                "would mix with them. Pass a `save_dir` of its own (one folder per run), move that run away, or "
                "resume it with `trainer.fit(..., ckpt_path=<its checkpoint>)`."
            )
        else:
            self.run_id = self.run_id or uuid.uuid4().hex
        try:
            for relative, info in infos.items():
                write_run_info(self.path / relative, {**info, "run_id": self.run_id})
        except OSError as err:
            return (
                f"Expected argument `save_dir` to be a folder this process can write, but writing "
                f"{self.path / 'run.json'} failed ({type(err).__name__}: {err.strerror or err}). Pass a writable "
                "`save_dir=...`."
            )
        self.claimed = True
        return ""

    def close(self) -> None:
        """Let the folder go (at ``teardown``); the next run of this callback claims it again."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.claimed = False
