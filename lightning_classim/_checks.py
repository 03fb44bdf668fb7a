"""Argument checks shared by the modules (no torch import, so the command line stays light)."""

from __future__ import annotations

from typing import get_args


def check_choice(name: str, value: object, literal: object) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is one of the ``Literal``'s choices."""
    choices = get_args(literal)
    if value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {list(choices)}, but got {value!r}.")


def check_num_classes(num_classes: object) -> None:
    """Raise a ValueError unless ``num_classes`` is an int larger than 1."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"Expected argument `num_classes` to be an int larger than 1, but got {num_classes!r}. "
            "Pass the number of output columns of your classifier."
        )
