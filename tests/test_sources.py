import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import ttest_ind
from sklearn.metrics.pairwise import cosine_similarity
from torch import nn

from lightning_classim.sources import (
    ClassFeatureSimilarity,
    LabelCooccurrence,
    confusion_similarity,
    weight_similarity,
)


def multihot(rng, n, m, p=0.3):
    y = (rng.random((n, m)) < p).astype(np.int64)
    y[:, 1] = y[:, 0] | (rng.random(n) < 0.1)  # label 1 mostly co-occurs with label 0
    return y


def ref_iou(y):
    c = y.T.astype(float) @ y
    d = np.diag(c)
    union = d[:, None] + d[None, :] - c
    out = np.divide(c, union, out=np.zeros_like(c), where=union > 0)
    np.fill_diagonal(out, 1.0)
    return c, out


def test_cooccurrence_counts_and_iou_over_batches(rng):
    y = multihot(rng, 500, 8)
    y[:, 7] = 0  # a label that never occurs
    counts, iou = ref_iou(y)
    raw = LabelCooccurrence(8, normalize="none")
    met = LabelCooccurrence(8)
    for b in np.array_split(y, 7):
        raw.update(torch.tensor(b))
        met.update(torch.tensor(b, dtype=torch.bool))
    np.testing.assert_array_equal(raw.compute().numpy(), counts)
    out = met.compute().numpy()
    np.testing.assert_allclose(out, iou, atol=1e-6)
    assert out[7, 7] == 1.0 and (out[7, :7] == 0).all()


def test_cooccurrence_from_class_indices(rng):
    idx = rng.integers(0, 4, 100)
    met = LabelCooccurrence(4, normalize="none")
    met.update(torch.tensor(idx))
    np.testing.assert_array_equal(met.compute().numpy(), np.diag(np.bincount(idx, minlength=4)))


def class_means(x, y):
    return np.stack(
        [x[y[:, c] > 0].mean(0) if (y[:, c] > 0).any() else np.zeros(x.shape[1]) for c in range(y.shape[1])]
    )


def test_feature_means_cosine_single_and_multilabel_and_conv(rng):
    x = rng.standard_normal((400, 6)) + 3
    idx = rng.integers(0, 5, 400)
    y = np.eye(5)[idx]
    met = ClassFeatureSimilarity(5, 6)
    for xb, yb in zip(np.array_split(x, 3), np.array_split(idx, 3)):
        met.update(torch.tensor(xb, dtype=torch.float32), torch.tensor(yb))
    ref = cosine_similarity(class_means(x, y))
    np.testing.assert_allclose(met.compute().numpy(), ref, atol=1e-5)
    # multi-hot targets: a sample counts for each of its labels
    ym = multihot(rng, 400, 5)
    met = ClassFeatureSimilarity(5, 6)
    met.update(torch.tensor(x, dtype=torch.float32), torch.tensor(ym))
    np.testing.assert_allclose(met.compute().numpy(), cosine_similarity(class_means(x, ym)), atol=1e-5)
    # convolutional features are reduced by global average pooling
    conv = rng.standard_normal((400, 6, 3, 4))
    met = ClassFeatureSimilarity(5, 6)
    met.update(torch.tensor(conv, dtype=torch.float32), torch.tensor(idx))
    ref = cosine_similarity(class_means(conv.mean(axis=(2, 3)), y))
    np.testing.assert_allclose(met.compute().numpy(), ref, atol=1e-5)


def test_welch_t_statistics_match_scipy(rng):
    x = rng.standard_normal((600, 7)) * rng.uniform(0.5, 3, 7) + 10
    idx = rng.integers(0, 4, 600)
    x[idx == 2, :3] += 1.0
    met = ClassFeatureSimilarity(4, 7, statistic="welch")
    for xb, yb in zip(np.array_split(x, 5), np.array_split(idx, 5)):
        met.update(torch.tensor(xb), torch.tensor(yb))
    out = met.compute().numpy()
    t = np.stack([ttest_ind(x[idx == c], x[idx != c], equal_var=False).statistic for c in range(4)])
    np.testing.assert_allclose(met.class_statistics.numpy(), t, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out, cosine_similarity(t), atol=1e-5)


def test_classes_without_samples_are_reported(rng):
    met = ClassFeatureSimilarity(4, 3)
    met.update(torch.randn(50, 3) + 1, torch.randint(0, 3, (50,)))
    with pytest.warns(UserWarning, match=r"1 classes had no samples .*\[3\]\. See `ClassFeatureSimilarity"):
        out = met.compute()
    assert met.undefined_classes.tolist() == [3]
    assert out[3, 3] == 1 and (out[3, :3] == 0).all() and not torch.isnan(out).any()


def test_weight_similarity_names_zero_rows(rng):
    w = torch.tensor(rng.standard_normal((4, 3)))
    w[1] = 0
    with pytest.warns(UserWarning, match=r"1 classes had an all-zero weight row.*set to 0: \[1\]"):
        out = weight_similarity(w)
    assert out[1, 1] == 1 and (out[1, [0, 2, 3]] == 0).all()
    np.testing.assert_allclose(out[[0, 2, 3]][:, [0, 2, 3]].numpy(), cosine_similarity(w[[0, 2, 3]].numpy()), atol=1e-6)


def test_weight_similarity_tensor_and_module(rng):
    w = rng.standard_normal((6, 4))
    np.testing.assert_allclose(weight_similarity(torch.tensor(w)).numpy(), cosine_similarity(w), atol=1e-6)
    fc = nn.Linear(4, 6)
    ref = cosine_similarity(fc.weight.detach().numpy())
    np.testing.assert_allclose(weight_similarity(fc, num_classes=6).numpy(), ref, atol=1e-6)
    with pytest.raises(ValueError, match=r"one row per class \(5\), but got shape \(6, 4\)"):
        weight_similarity(fc, num_classes=5)
    with pytest.raises(ValueError, match=r"shape \(num_classes, features\), but got \(6,\)"):
        weight_similarity(torch.ones(6))


def test_confusion_similarity_by_hand():
    conf = torch.tensor([[6, 3, 1], [0, 10, 0], [0, 0, 0]])
    out = confusion_similarity(conf).numpy()
    np.testing.assert_allclose(out, [[1, 0.15, 0.05], [0.15, 1, 0], [0.05, 0, 1]], atol=1e-7)


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: LabelCooccurrence(1), r"`num_classes` to be an int larger than 1, but got 1"),
        (lambda: LabelCooccurrence(3, normalize="jaccard"), r"`normalize` to be one of \['iou', 'none'\]"),
        (
            lambda: ClassFeatureSimilarity(3, 0),
            r"`num_features` to be an int of at least 1, but got 0\. Pass the width",
        ),
        (lambda: ClassFeatureSimilarity(3, 2, statistic="t"), r"`statistic` to be one of \['mean', 'welch'\]"),
    ],
)
def test_bad_arguments(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"class indices \(N,\) or multi-hot labels \(N, 3\), but got shape \(4, 2\)"):
        LabelCooccurrence(3).update(torch.ones(4, 2))
    with pytest.raises(TypeError, match=r"integer class indices, but got dtype torch.float32"):
        LabelCooccurrence(3).update(torch.ones(4))
    met = ClassFeatureSimilarity(3, 2)
    with pytest.raises(ValueError, match=r"num_features=2 channels, but got shape \(4, 5\)"):
        met.update(torch.ones(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"same samples, but got 4 and 3"):
        met.update(torch.ones(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"`features` to be a floating point tensor"):
        met.update(torch.ones(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def _worker(rank, init_file, kind, shards, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        met = LabelCooccurrence(6) if kind == "cooc" else ClassFeatureSimilarity(6, 5, statistic=kind)
        for batch in shards[rank]:
            met.update(*batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(met.compute(), os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cooc", "mean", "welch"])
def test_ddp_two_processes_equal_single_process(tmp_path, rng, kind):
    x = torch.tensor(rng.standard_normal((700, 5)) + 2)
    y = torch.tensor(multihot(rng, 700, 6)) if kind == "cooc" else torch.tensor(rng.integers(0, 6, 700))
    batches = [(y[i : i + 64],) if kind == "cooc" else (x[i : i + 64], y[i : i + 64]) for i in range(0, 700, 64)]
    shards = [batches[:9], batches[9:]]  # uneven
    single = LabelCooccurrence(6) if kind == "cooc" else ClassFeatureSimilarity(6, 5, statistic=kind)
    for batch in batches:
        single.update(*batch)
    expected = single.compute()
    mp.spawn(_worker, args=(str(tmp_path / "init"), kind, shards, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        np.testing.assert_allclose(torch.load(Path(tmp_path) / f"r{r}.pt").numpy(), expected.numpy(), atol=1e-6)
