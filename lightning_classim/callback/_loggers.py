"""Handing one analysed epoch to the trackers: one writer per logger class, found by :func:`writer_for`.

A writer takes the logger, the epoch's :class:`EpochLog` and the tag prefix, and logs what its tracker can show.
Loggers without a writer of their own get the scalars through ``log_metrics`` (the pictures and tables are on disk).
:func:`register_logger` adds a writer for a logger class of yours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from lightning_classim.callback._epoch import Panel

__all__ = ["Dispatch", "EpochLog", "LoggerWriter", "register_logger", "scalars_only", "writer_for"]


@dataclass
class EpochLog:
    """What one epoch logs: produced on the worker thread, handed to the loggers on the training thread.

    Tags are ``<prefix>/<name><suffix>``: the prefix is the callback's ``tag_prefix`` (``classim/test`` for the
    test set), the suffix ``/dataloader_idx_N`` when the stage has several dataloaders, as Lightning tags them.
    """

    epoch: int
    step: int
    scalars: dict[str, float]
    panels: list[Panel] = field(default_factory=list)
    #: ``(source, number of groups)`` of the analyses whose automatic choice hit the top of its range
    at_max_groups: list[tuple[str, int]] = field(default_factory=list)
    #: ``(source, note)`` of what the analyses could not do as asked
    notes: list[tuple[str, str]] = field(default_factory=list)
    prefix: str = "classim"
    suffix: str = ""
    #: why the epoch's files could not be written (``""`` when they were)
    write_error: str = ""
    #: ``"validate"`` or ``"test"``
    stage: str = "validate"
    dataloader_idx: int = 0
    #: the epoch's snapshot folders on disk (empty when they could not be written)
    folders: list[Path] = field(default_factory=list)

    def tag(self, panel: Panel, name: str) -> str:
        """The tag of one of a panel's items: ``classim/heatmap`` or ``classim/features_layer4/heatmap``."""
        return f"{self.prefix}/{panel.path}/{name}{self.suffix}" if panel.path else f"{self.prefix}/{name}{self.suffix}"

    def tagged_scalars(self) -> dict[str, float]:
        """The scalars under their tags (``classim/n_groups``, ...)."""
        return {f"{self.prefix}/{k}{self.suffix}": v for k, v in self.scalars.items()}


#: A function that logs an epoch to one logger: ``writer(logger, log)``. It returns ``True`` when it logged the
#: pictures and tables too, ``False`` when only the scalars.
LoggerWriter = Callable[[Any, EpochLog], bool]

_WRITERS: dict[type, LoggerWriter] = {}


def register_logger(logger_class: type, writer: LoggerWriter, replace: bool = True) -> None:
    """Use ``writer`` for loggers of ``logger_class`` (and its subclasses without a writer of their own).

    With ``replace=False``, a writer already registered for the class stays.

    Example:
        >>> from lightning_classim.callback import register_logger
        >>> class MyLogger:
        ...     def log_metrics(self, metrics, step): print(sorted(metrics)[:1], step)
        >>> def write(logger, log):
        ...     logger.log_metrics(log.tagged_scalars(), log.step)
        ...     return False  # only the scalars
        >>> register_logger(MyLogger, write)
    """
    if not isinstance(logger_class, type) or not callable(writer):
        raise ValueError(
            f"Expected a logger class and a writer function, but got {logger_class!r} and {writer!r}. Example: "
            "register_logger(MyLogger, write) with write(logger, log) -> bool."
        )
    if replace or logger_class not in _WRITERS:
        _WRITERS[logger_class] = writer


def writer_for(logger: Any) -> LoggerWriter:
    """The writer of a logger: the one registered for its class or the nearest base class, else scalars only."""
    for cls in type(logger).__mro__:
        if cls in _WRITERS:
            return _WRITERS[cls]
    return scalars_only


class Dispatch:
    """Sends each epoch to the loggers, and says what needs saying once per fit (not every epoch)."""

    def __init__(self) -> None:
        self._said: set[tuple[str, str]] = set()

    def _once(self, kind: str, key: str) -> bool:
        if (kind, key) in self._said:
            return False
        self._said.add((kind, key))
        return True

    def send(self, logger: Any, log: EpochLog, save_dir: Path | None) -> None:
        """Log one epoch to one logger; a failing logger gets a warning, never stops training."""
        try:
            pictures = writer_for(logger)(logger, log)
        except Exception as err:  # the files are already on disk
            rank_zero_warn(
                f"ClassSimilarityCallback: logging epoch {log.epoch} to {type(logger).__name__} failed "
                f"({type(err).__name__}: {err}); the epoch's files are in {save_dir}.",
                category=UserWarning,
            )
            return
        name = type(logger).__name__
        if not pictures and self._once("logger", name):
            rank_zero_warn(
                f"ClassSimilarityCallback logs only the scalars to {name}; the heatmaps and group summaries are "
                f"written to {save_dir}. See `lightning_classim.callback.register_logger` to add a tracker.",
                category=UserWarning,
            )

    def once(self, kind: str, key: str, message: str) -> None:
        """Warn ``message`` (on rank 0) the first time ``(kind, key)`` comes up."""
        if self._once(kind, key):
            rank_zero_warn(f"ClassSimilarityCallback: {message}", category=UserWarning)

    def params(self, logger: Any, params: dict[str, Any]) -> None:
        """Give a logger the run parameters (``log_hyperparams``); a failure is a warning, once per logger."""
        try:
            logger.log_hyperparams(params)
        except Exception as err:
            self.once("params", type(logger).__name__, f"could not log the run parameters to {type(logger).__name__} "
                      f"({type(err).__name__}: {err}); training goes on.")  # fmt: skip

    def advise(self, log: EpochLog, primary: str) -> None:
        """The analyses' advice, once per source and fit (the same tie tends to recur every epoch)."""
        if log.write_error.startswith("explorer:") and log.folders:
            rank_zero_warn(
                f"ClassSimilarityCallback: could not build the explorer page of epoch {log.epoch} "
                f"({log.write_error[10:]}); the epoch's other files are on disk, and training goes on.",
                category=UserWarning,
            )
        elif log.write_error:  # said at every epoch it hits: a disk that fills at epoch 3 of 50 says so 47 times
            rank_zero_warn(
                f"ClassSimilarityCallback: could not write the files of epoch {log.epoch} ({log.write_error}); no "
                "partial file or folder was left on disk, the loggers still get the epoch, and training goes on.",
                category=UserWarning,
            )
        for name, k in log.at_max_groups:
            if self._once("max_groups", name):
                which = "" if name == primary else f", source {name!r}:"
                alone = "" if name == primary else " (or give that source options of its own)"
                rank_zero_warn(
                    f"ClassSimilarityCallback: at epoch {log.epoch}{which} the automatic choice picked {k} groups, "
                    f"the most it tried; the classes may form more groups. Pass `StructureOptions(max_groups=...)` "
                    f"larger than {k}{alone} to let it choose more.",
                    category=UserWarning,
                )
        for name, note in log.notes:
            if self._once("note", name):
                alone = (
                    " To change the options of this source alone, give it options of its own, e.g. "
                    "`CooccurrenceSource(StructureOptions(method='average'))` in `sources`."
                    if name != primary
                    else " Options go to the callback: `options=StructureOptions(...)`."
                )
                rank_zero_warn(
                    f"ClassSimilarityCallback: at epoch {log.epoch}, source {name!r}: {note}{alone} (Said once per "
                    "source; every epoch's notes are in its summary.json and group table.)",
                    category=UserWarning,
                )


def scalars_only(logger: Any, log: EpochLog) -> bool:
    """The writer of a logger without one of its own: the scalars, through ``log_metrics``."""
    logger.log_metrics(log.tagged_scalars(), log.step)
    return False
