"""Where the structure analysis chooses between the compiled kernels and their numpy reference: here only.

:func:`ops` returns :mod:`._kernels` when numba imports and ``LIGHTNING_CLASSIM_NUMBA`` is not ``"0"``, else
:mod:`._reference`; both have the same functions with the same results (the tests compare them). The rest of the
analysis calls ``ops().<function>(...)`` and never asks which one it got.
"""

from __future__ import annotations

from types import ModuleType

import lightning_classim.structure._kernels as _kernels
import lightning_classim.structure._reference as _reference

__all__ = ["NN_CHAIN_METHODS", "compiled", "ops", "square_matrix_steps"]

#: The linkage methods that both backends compute with scipy's nearest-neighbour chain (the others: scipy's linkage).
NN_CHAIN_METHODS = frozenset(_kernels.NN_CHAIN_METHODS)


def compiled() -> bool:
    """Whether the compiled kernels run (numba imports and ``LIGHTNING_CLASSIM_NUMBA`` is not ``"0"``)."""
    return _kernels.available()


def square_matrix_steps() -> bool:
    """Whether the linkage and the cophenetic sums work on the square matrix, or on scipy's condensed vector.

    The square matrix with the compiled kernels (faster, and no condensed vector); the condensed vector with the
    reference, where scipy's linkage and ``cophenet`` are cheaper.
    """
    return _kernels.available()


def ops() -> ModuleType:
    """The module of the analysis's inner steps: the compiled kernels, or their numpy reference."""
    return _kernels if _kernels.available() else _reference
