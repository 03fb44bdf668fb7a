"""Argument checks shared by the modules: one message template, the value received and the fix.

Every check raises ``ValueError`` (``TypeError`` where the type alone is wrong and no value could be right) with
the form ``Expected argument `name` to be ..., but got <value>. <fix>``. Nothing here imports torch, so the command
line stays light.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_finite_number",
    "check_fraction",
    "check_int",
    "check_names",
    "check_num_classes",
    "check_order",
]


def check_choice(name: str, value: object, literal: object) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is one of the ``Literal``'s choices."""
    choices = get_args(literal)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {list(choices)}, but got {value!r}.")


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool; only ``True``, ``False`` (and numpy's bools) are accepted, never ``"no"`` or ``1``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"Expected argument `{name}` to be True or False, but got {value!r}.")


def _as_int(value: object) -> int | None:
    """An integer-like value (int, numpy integer, 0-d integer tensor) as an int; ``None`` otherwise (bools too)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    dtype = getattr(value, "dtype", None)
    if dtype is not None and (getattr(value, "ndim", 0) != 0 or "bool" in str(dtype)):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_int(name: str, value: object, minimum: int, fix: str = "") -> int:
    """``value`` as an int of at least ``minimum`` (numpy integers and 0-d integer tensors accepted)."""
    number = _as_int(value)
    if number is None or number < minimum:
        tail = f" {fix}" if fix else ""
        raise ValueError(f"Expected argument `{name}` to be an int of at least {minimum}, but got {value!r}.{tail}")
    return number


def check_num_classes(num_classes: object, name: str = "num_classes") -> int:
    """``num_classes`` as an int larger than 1 (numpy integers and 0-d integer tensors accepted)."""
    number = _as_int(num_classes)
    if number is None or number < 2:
        raise ValueError(
            f"Expected argument `{name}` to be an int larger than 1, but got {num_classes!r}. "
            "Pass the number of output columns of your classifier."
        )
    return number


def check_finite_number(name: str, value: object, fix: str = "") -> float:
    """``value`` as a finite float (ints and numpy numbers accepted; bools, strings, NaN and infinity refused)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise ValueError(
            f"Expected argument `{name}` to be a finite number, but got {value!r}.{' ' + fix if fix else ''}"
        )
    return float(value)  # type: ignore[arg-type]


def check_fraction(name: str, value: object, default: float, closed: bool) -> float:
    """``value`` as a number in ``(0, 1]`` (``closed``) or ``(0, 1)``."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    if not (0 < number < 1 or (closed and number == 1)):
        interval = "(0, 1]" if closed else "(0, 1)"
        raise ValueError(
            f"Expected argument `{name}` to be a number in {interval}, but got {value!r}. Pass a fraction such as the "
            f"default {default}."
        )
    return number


def check_order(order: Any, m: int, name: str = "order") -> np.ndarray:
    """``order`` as an ``intp`` permutation of ``range(m)``."""
    arr = np.asarray(order)
    if arr.ndim != 1 or arr.shape[0] != m or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"Expected argument `{name}` to be a 1-d integer permutation of range({m}), but got "
            f"{'dtype ' + str(arr.dtype) + ' and ' if not np.issubdtype(arr.dtype, np.integer) else ''}"
            f"shape {arr.shape}."
        )
    if arr.size and (arr.min() < 0 or arr.max() >= m or np.unique(arr).size != m):
        raise ValueError(
            f"Expected argument `{name}` to be a permutation of range({m}), but some classes are missing or repeated."
        )
    return arr.astype(np.intp)


def check_names(class_names: Sequence[Any] | None, m: int, name: str = "class_names") -> list[str]:
    """The class names as strings (the indices when ``None``); one per class."""
    if class_names is None:
        return [str(i) for i in range(m)]
    if isinstance(class_names, str):
        raise ValueError(
            f"Expected argument `{name}` to be a sequence of {m} names, but got the string {class_names!r}."
        )
    names = [str(n) for n in class_names]
    if len(names) != m:
        raise ValueError(f"Expected argument `{name}` to name all {m} classes, but got {len(names)} names.")
    return names
