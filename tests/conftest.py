import os

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def correlated_scores(rng: np.random.Generator, n: int, m: int, k: int = 4, noise: float = 0.7) -> np.ndarray:
    """Scores with a low-rank structure (k latent factors) plus noise, float64."""
    latent = rng.standard_normal((n, k))
    loadings = rng.standard_normal((k, m))
    return latent @ loadings + noise * rng.standard_normal((n, m))
