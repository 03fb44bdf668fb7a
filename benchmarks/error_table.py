"""Largest error of ``ClassSimilarity`` against ``numpy.corrcoef`` by offset, batch size and dtype.

Run: ``python benchmarks/error_table.py``. Scores: 4 latent factors over m = 32 classes plus noise, N = 4,096
samples, shifted by a common offset; the reference is numpy's corrcoef (float64) of the very values fed (float32
scores rounded to float32 first). Results: ``benchmarks/results_error_table_cpu.md``.
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_classim import ClassSimilarity

OFFSETS = (0.0, 1e3, 1e4, 1e5, 1e6, 1e7)
BATCHES = (1, 16, 256, 4096)


def error(x: torch.Tensor, batch: int) -> float:
    metric = ClassSimilarity(x.shape[1])
    for part in x.split(batch):
        metric.update(part)
    got = metric.compute().double().numpy()
    return float(np.abs(got - np.corrcoef(x.double().numpy(), rowvar=False)).max())


def main() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4096, 4)) @ rng.standard_normal((4, 32)) + 0.7 * rng.standard_normal((4096, 32))
    print(f"torch {torch.__version__}, m = 32, N = 4096; largest |r - numpy| over all pairs")
    print("| dtype | offset | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in BATCHES) + " |")
    for dtype in (torch.float32, torch.float64):
        for offset in OFFSETS:
            x = torch.tensor(z + offset, dtype=dtype)
            cells = " | ".join(f"{error(x, b):.1e}" for b in BATCHES)
            print(f"| {str(dtype).removeprefix('torch.')} | {offset:g} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
