"""The Lightning callback and its parts, one step each.

* ``_callback``: :class:`ClassSimilarityCallback` (hooks, capture, threading, state, logging);
* ``_capture``: where the scores, targets and hooked outputs of a validation step come from;
* ``_epoch``: :func:`analyse_epoch` and :func:`write_epoch`, the analysis of one epoch as plain functions;
* ``_worker``: the worker thread and its queue;
* ``_loggers``: one writer per tracker, and :func:`register_logger` to add one;
* ``_state``: the checkpoint state.
"""

from lightning_classim.callback._callback import ClassSimilarityCallback
from lightning_classim.callback._epoch import EpochAnalysis, Panel, analyse_epoch, write_epoch
from lightning_classim.callback._loggers import EpochLog, LoggerWriter, register_logger

__all__ = [
    "ClassSimilarityCallback",
    "EpochAnalysis",
    "EpochLog",
    "LoggerWriter",
    "Panel",
    "analyse_epoch",
    "register_logger",
    "write_epoch",
]
