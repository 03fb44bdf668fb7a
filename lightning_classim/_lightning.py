"""Both Lightning namespaces: ``pytorch_lightning`` (a dependency) and ``lightning.pytorch`` (used where installed).

A callback placed in a Trainer of either namespace must subclass that namespace's ``Callback`` (else Lightning 2.x
refuses it); :data:`CallbackBase` subclasses both when both import. :func:`logger_classes` gives a logger class of
both namespaces by name, for the trackers' writers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytorch_lightning.callbacks import Callback as _PlCallback

__all__ = ["LIGHTNING_AVAILABLE", "CallbackBase", "Trainer", "logger_classes"]


def _lightning_pytorch() -> Any:
    try:
        return importlib.import_module("lightning.pytorch")
    except Exception:  # not installed, or broken: the pytorch_lightning namespace alone
        return None


_LPT = _lightning_pytorch()
#: Whether the unified ``lightning`` package imports (``lightning.pytorch``).
LIGHTNING_AVAILABLE = _LPT is not None

if TYPE_CHECKING:
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import Callback as CallbackBase
else:
    Trainer = Any
    if _LPT is not None and _LPT.Callback is not _PlCallback:

        class CallbackBase(_PlCallback, _LPT.Callback):
            """A ``Callback`` of both namespaces."""

    else:
        CallbackBase = _PlCallback


def logger_classes(name: str) -> list[type]:
    """The logger class ``name`` (e.g. ``"TensorBoardLogger"``) of each namespace that has it."""
    found = []
    for package in ("pytorch_lightning.loggers", "lightning.pytorch.loggers"):
        try:
            cls = getattr(importlib.import_module(package), name)
        except Exception:  # the namespace or the logger is not there
            continue
        if cls not in found:
            found.append(cls)
    return found
