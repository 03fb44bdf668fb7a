"""The compiled linkage against scipy's, and the analysis with and without it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform

from lightning_classim import _kernels, analyze

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


def _condensed_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((120, 8))
    planted = np.repeat(np.eye(6), 20, axis=0) * 3 + rng.standard_normal((120, 6))
    return {
        "correlation": squareform(1 - np.corrcoef(rows), checks=False),
        "planted blocks": squareform(1 - np.corrcoef(planted), checks=False),
        # many exact ties: the tie rules (previous chain element first, then the lowest index) decide
        "quarter steps": rng.integers(0, 5, 57 * 56 // 2) / 4.0,
        "all equal": np.ones(40 * 39 // 2),
        "two classes": np.array([0.3]),
        "three classes": np.array([0.5, 0.5, 0.2]),
    }


@pytest.mark.parametrize("method", sorted(_kernels.NN_CHAIN_METHODS))
@pytest.mark.parametrize("case", sorted(_condensed_cases()))
def test_nn_chain_equals_scipy_bit_for_bit(method: str, case: str) -> None:
    y = _condensed_cases()[case]
    expected = linkage(y, method)
    got = _kernels.nn_chain_linkage(squareform(y), method)
    np.testing.assert_array_equal(got, expected)


def test_one_minus_takes_the_upper_triangle_as_scipy_does() -> None:
    rng = np.random.default_rng(2)
    sim = rng.uniform(-1, 1, (150, 150))  # not symmetric: the upper triangle decides, as in squareform; 3 tiles
    expected = squareform(squareform(1.0 - sim, checks=False))
    np.testing.assert_array_equal(_kernels.one_minus(sim), expected)


def test_nn_chain_rejects_a_matrix_it_cannot_work_in() -> None:
    d = squareform(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"`dist` to be a square C-contiguous float64 matrix, but got dtype float32"):
        _kernels.nn_chain_linkage(d.astype(np.float32), "complete")
    with pytest.raises(ValueError, match=r"but got dtype float64 and shape \(3, 3\)"):
        _kernels.nn_chain_linkage(np.asfortranarray(d), "complete")


def _planted_similarity(m: int, blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.eye(blocks), -(-m // blocks), axis=0)[:m] * 2 + rng.standard_normal((m, blocks))
    return np.corrcoef(rows)


@pytest.mark.parametrize("method", ["complete", "average", "weighted", "ward", "single", "centroid"])
def test_analyze_gives_the_same_result_with_and_without_the_kernel(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = _planted_similarity(300, 6)
    with_kernel = analyze(sim, method=method)
    monkeypatch.setattr(_kernels, "ENABLED", False)
    without = analyze(sim, method=method)
    np.testing.assert_array_equal(with_kernel.linkage, without.linkage)
    reference = linkage(squareform(_distances(sim, method), checks=False), method)
    np.testing.assert_array_equal(with_kernel.linkage, reference)
    np.testing.assert_array_equal(with_kernel.order, without.order)
    np.testing.assert_array_equal(with_kernel.groups, without.groups)
    assert with_kernel.metrics == pytest.approx(without.metrics, rel=1e-12)


def _distances(sim: np.ndarray, method: str) -> np.ndarray:
    d = np.maximum(1.0 - sim, 0.0)
    return np.sqrt(2.0 * d) if method in ("ward", "centroid", "median") else d


def test_large_analysis_rebuilds_the_distances_it_let_go() -> None:
    # 1,600 classes: the condensed vector is dropped during the compiled linkage; one block of 1,500 classes makes the
    # cophenetic correlation fall back to all pairs, which needs it again
    rng = np.random.default_rng(1)
    rows = np.concatenate([np.ones((1500, 1)) * 3, np.zeros((100, 1))]) + rng.standard_normal((1600, 4))
    sim = np.corrcoef(rows)
    result = analyze(sim, n_groups=1, find_failed=False)
    y = squareform(1.0 - sim, checks=False)
    z = linkage(y, "complete")
    np.testing.assert_array_equal(result.linkage, z)
    assert result.metrics["cophenetic_corr"] == pytest.approx(cophenet(z, y)[0], rel=1e-9)


def test_environment_variable_turns_the_kernel_off() -> None:
    code = "from lightning_classim import _kernels; print(_kernels.ENABLED, _kernels.available())"
    env = {**os.environ, "LIGHTNING_CLASSIM_NUMBA": "0"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env["LIGHTNING_CLASSIM_NUMBA"] = "1"
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert (off.stdout.split(), on.stdout.split()) == (["False", "False"], ["True", "True"])


def _longest_stall(run: Callable[[], object]) -> tuple[float, float]:
    """Longest pause of a Python loop on this thread while ``run`` works on another; and how long ``run`` took."""
    finished = threading.Event()
    took = [0.0]

    def work() -> None:
        t0 = time.perf_counter()
        run()
        took[0] = time.perf_counter() - t0
        finished.set()

    thread = threading.Thread(target=work)
    longest = 0.0
    last = time.perf_counter()
    thread.start()
    while not finished.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    thread.join()
    return longest, took[0]


def test_the_kernel_lets_other_threads_run() -> None:
    # scipy's linkage holds the GIL: a Python loop on another thread stops until it returns. The kernel releases
    # it, so the loop goes on (the training thread, when the callback analyses on a worker thread).
    y = squareform(1 - _planted_similarity(3000, 30), checks=False)
    _kernels.nn_chain_linkage(squareform(y[:3]), "complete")  # compiled or loaded from the cache beforehand
    square = squareform(y)
    stall, took = _longest_stall(lambda: _kernels.nn_chain_linkage(square, "complete"))
    assert stall < took / 3, f"the loop stopped for {stall:.3f} s of the linkage's {took:.3f} s"
