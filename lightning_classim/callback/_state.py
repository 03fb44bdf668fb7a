"""The callback's checkpoint state: each source's last :class:`~lightning_classim.StructureResult`, in its one shape.

A result is stored as its arrays (tensors, so that ``torch.load(weights_only=True)`` reads them) and its JSON-ready
summary and class names: the same parts that go to disk, put back together by ``StructureResult.from_parts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lightning_classim.structure import StructureResult

__all__ = ["results_from_state", "results_to_state"]


def results_to_state(results: Mapping[str, StructureResult]) -> dict[str, Any]:
    """``{source: {"arrays": {name: tensor}, "summary": dict, "class_names": list}}``."""
    return {
        name: {
            "arrays": {k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in result.arrays().items()},
            "summary": result.to_dict(),
            "class_names": list(result.class_names),
        }
        for name, result in results.items()
    }


def results_from_state(state: Mapping[str, Any]) -> dict[str, StructureResult]:
    """The inverse of :func:`results_to_state`."""
    out = {}
    for name, part in state.items():
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in part["arrays"].items()}
        out[name] = StructureResult.from_parts(arrays, part["summary"], part["class_names"])
    return out
