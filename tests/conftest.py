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


def planted_hierarchy(
    rng: np.random.Generator, top: int = 3, sub: int = 3, per: int = 5, n: int = 4000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores with a planted two-level hierarchy: top groups of sub-groups of classes.

    Returns the (n, m) scores, the top-level label and the sub-level label of each class. Class indices are
    shuffled so that the order has to be found.
    """
    m = top * sub * per
    top_lab = np.repeat(np.arange(top), sub * per)
    sub_lab = np.repeat(np.arange(top * sub), per)
    perm = rng.permutation(m)
    top_lab, sub_lab = top_lab[perm], sub_lab[perm]
    f_top = rng.standard_normal((n, top))
    f_sub = rng.standard_normal((n, top * sub))
    scores = 2.0 * f_top[:, top_lab] + 1.2 * f_sub[:, sub_lab] + 0.8 * rng.standard_normal((n, m))
    return scores, top_lab, sub_lab


def assert_heatmap_inside(image: np.ndarray, box, matrix, order=None, groups=None, **kwargs) -> None:
    """The labelled picture ``image`` holds, at ``box``, exactly ``render_heatmap``'s image of the matrix."""
    from lightning_classim import render_heatmap

    left, top, right, bottom = (int(v) for v in box)
    crop = np.asarray(image)[top:bottom, left:right, :3]
    side = crop.shape[0]
    expected = render_heatmap(matrix, order, groups, max_pixels=side, min_pixels=side, **kwargs)
    np.testing.assert_array_equal(crop, expected)
