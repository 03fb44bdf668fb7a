"""HeadSimilarity: the exact similarity of a linear head's logits from the features' covariance (numpy references)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_classim import ClassSimilarity, HeadSimilarity
from lightning_classim.metric import DENSE_MAX_CLASSES


def features_and_head(rng: np.random.Generator, n: int = 3000, d: int = 24, m: int = 150, offset: float = 0.0):
    mix = rng.standard_normal((d, d)) * np.linspace(0.1, 2.0, d)
    h = rng.standard_normal((n, d)) @ mix + offset
    w = rng.standard_normal((m, d))
    b = rng.standard_normal(m) * 5
    return h, w, b


def feed(metric: HeadSimilarity, h: np.ndarray, batch: int = 256, dtype=torch.float32) -> HeadSimilarity:
    for part in torch.tensor(h, dtype=dtype).split(batch):
        metric.update(part)
    return metric


@pytest.mark.parametrize(("offset", "dtype"), [(0.0, torch.float32), (1e3, torch.float32), (0.0, torch.float64)])
def test_vectors_give_numpys_correlation_of_the_logits(offset, dtype):
    rng = np.random.default_rng(0)
    h, w, b = features_and_head(rng, offset=offset)
    emb = feed(HeadSimilarity(24), h, dtype=dtype).compute(torch.tensor(w), torch.tensor(b))
    logits = h @ w.T + b
    reference = np.corrcoef(logits, rowvar=False)
    v = emb.vectors.double().numpy()
    assert emb.vectors.shape == (150, 24) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(v @ v.T, reference, atol=1e-5)
    np.testing.assert_allclose(emb.matrix().numpy(), reference, atol=1e-5)
    np.testing.assert_allclose(emb.matrix(slice(10, 20)).numpy(), reference[10:20], atol=1e-5)
    # the bias changes no correlation
    again = feed(HeadSimilarity(24), h, dtype=dtype).compute(torch.tensor(w))
    np.testing.assert_allclose(again.vectors.numpy(), emb.vectors.numpy(), atol=1e-6)


def test_rank_deficient_features_and_a_constant_class_as_the_dense_metric():
    rng = np.random.default_rng(1)
    n, d, m = 500, 12, 40
    h = rng.standard_normal((n, 5)) @ rng.standard_normal((5, d))  # rank 5
    w = rng.standard_normal((m, d))
    w[7] = 0.0  # a class whose logit never varies
    emb = feed(HeadSimilarity(d), h).compute(torch.tensor(w))
    assert emb.vectors.shape[1] <= d and emb.constant_classes.tolist() == [7]
    dense = ClassSimilarity(m)
    with pytest.warns(UserWarning, match="constant"):
        dense.update(torch.tensor(h @ w.T, dtype=torch.float64))
        expected = dense.compute().numpy()
    np.testing.assert_allclose(emb.matrix().numpy(), expected, atol=1e-5)  # row 7: 0, with 1 on the diagonal


def test_neighbours_are_exact_in_blocks():
    rng = np.random.default_rng(2)
    h, w, _ = features_and_head(rng, m=333)
    emb = feed(HeadSimilarity(24), h).compute(torch.tensor(w))
    ref = np.corrcoef(h @ w.T, rowvar=False)
    np.fill_diagonal(ref, -np.inf)
    top = emb.neighbours(7, block=50)  # 7 blocks, the last partial
    expected = np.argsort(-ref, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(top.indices.numpy(), expected)
    np.testing.assert_allclose(top.values.numpy(), np.take_along_axis(ref, expected, axis=1), atol=1e-5)
    with pytest.raises(ValueError, match=r"`k` to be at most 332 \(the other classes\), but got 333"):
        emb.neighbours(333)
    with pytest.raises(ValueError, match=r"`k` to be an int of at least 1, but got 0"):
        emb.neighbours(0)


def test_block_means_are_the_dense_blocks_means():
    rng = np.random.default_rng(3)
    h, w, _ = features_and_head(rng, m=60)
    emb = feed(HeadSimilarity(24), h).compute(torch.tensor(w))
    ref = np.corrcoef(h @ w.T, rowvar=False)
    labels = rng.integers(0, 6, 60)
    expected = np.array([[ref[np.ix_(labels == a, labels == b)].mean() for b in range(6)] for a in range(6)])
    np.testing.assert_allclose(emb.block_means(torch.tensor(labels)).numpy(), expected, atol=1e-5)


def test_errors_name_the_argument_and_the_fix():
    metric = HeadSimilarity(8)
    with pytest.raises(ValueError, match=r"at least 2 samples of features .* but got 0"):
        with pytest.warns(UserWarning, match="was called before the ``update`` method"):
            metric.compute(torch.zeros(3, 8))
    metric.update(torch.randn(10, 8))
    with pytest.raises(ValueError, match=r"`weight` to be the head's \(m, 8\) weight, but got shape \(3, 7\)"):
        metric.compute(torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"`bias` of shape \(3,\), but got \(4,\)"):
        metric.compute(torch.zeros(3, 8), torch.zeros(4))
    with pytest.raises(ValueError, match=r"`features` to be of shape \(N, 8\) \(the head's input\), but got \(4, 9\)"):
        metric.update(torch.zeros(4, 9))
    with pytest.raises(TypeError, match=r"`features` to be a float tensor .* but got torch.int64"):
        metric.update(torch.zeros(4, 8, dtype=torch.long))
    bad = HeadSimilarity(8)
    bad.update(torch.full((4, 8), float("nan")))
    with pytest.raises(ValueError, match=r"features to be finite, .* pass `nan_strategy='skip'`"):
        bad.compute(torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"`num_classes` to be at most 40,000 for the dense matrix, but got 100,000"):
        ClassSimilarity(100_000)
    assert DENSE_MAX_CLASSES == 40_000


def test_compute_is_not_cached_between_weights():
    rng = np.random.default_rng(4)
    h, w, _ = features_and_head(rng, m=20)
    metric = feed(HeadSimilarity(24), h)
    first = metric.compute(torch.tensor(w)).matrix()
    second = metric.compute(torch.tensor(w[::-1].copy())).matrix()
    np.testing.assert_allclose(second.numpy(), first.numpy()[::-1, ::-1], atol=1e-6)


def _ddp_worker(rank: int, world: int, init_file: str, shards: list, weight: torch.Tensor, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = HeadSimilarity(weight.shape[1])
        for batch in shards[rank]:
            metric.update(batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty rank warns that compute came before update
            out = metric.compute(weight)
        torch.save(out.vectors, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["uneven", "empty_rank1"])
def test_ddp_two_processes_equal_the_single_process_and_numpy(tmp_path: Path, layout: str):
    rng = np.random.default_rng(5)
    h, w, _ = features_and_head(rng, n=3100, d=16, m=90, offset=100.0)
    x = torch.tensor(h, dtype=torch.float32)
    if layout == "uneven":
        shards = [list(x[:2500].split(256)), list(x[2500:].split(100))]
    else:
        shards = [list(x.split(256)), []]
    weight = torch.tensor(w)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), shards, weight, str(tmp_path)), nprocs=2, join=True)
    reference = np.corrcoef(h @ w.T, rowvar=False)
    for rank in range(2):
        v = torch.load(tmp_path / f"rank{rank}.pt").double().numpy()
        np.testing.assert_allclose(v @ v.T, reference, atol=1e-5)
