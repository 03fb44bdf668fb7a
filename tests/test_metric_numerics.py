"""The metric's numerics and state handling against numpy: offsets, scales, batch sizes, NaN, merges, modes.

Each case here gave a wrong number, a NaN or a torch error before the centred (Chan) accumulation; references are
numpy's corrcoef of the same values in float64, or scipy's ranks.
"""

import warnings

import numpy as np
import pytest
import torch
from conftest import correlated_scores
from scipy.stats import rankdata

from lightning_classim import ClassSimilarity, class_similarity


def ref_corr(values) -> np.ndarray:
    return np.corrcoef(np.asarray(values, dtype=np.float64), rowvar=False)


def feed(metric: ClassSimilarity, x: torch.Tensor, batch: int) -> np.ndarray:
    for b in x.split(batch):
        metric.update(b)
    return metric.compute().double().numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [1e3, 1e5, 1e6])
@pytest.mark.parametrize("batch", [1, 256])
def test_error_stays_below_1e5_at_large_offsets_and_any_batch_size(rng, dtype, offset, batch):
    x = torch.tensor(correlated_scores(rng, 1500 if batch == 1 else 6000, 16) + offset, dtype=dtype)
    err = np.abs(feed(ClassSimilarity(16), x, batch) - ref_corr(x.double().numpy())).max()
    assert err <= 1e-5, err


@pytest.mark.parametrize("scale", [1e-30, 1e20])
def test_tiny_and_huge_scales_neither_underflow_nor_overflow(rng, scale):
    # float32 squares of 1e-30 underflow to 0 ("constant" classes) and of 1e20 overflow to inf (NaN entries)
    x = torch.tensor(correlated_scores(rng, 3000, 10) * scale, dtype=torch.float32)
    metric = ClassSimilarity(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "constant classes" warning
        out = feed(metric, x, 256)
    assert metric.constant_classes.numel() == 0
    np.testing.assert_allclose(out, ref_corr(x.double().numpy()), atol=1e-5)


def test_small_but_real_variance_is_not_constant(rng):
    # float64 logits 1000 + 1e-9 z and probabilities around 1e-25: real variance, relative to the data's own scale
    z = correlated_scores(rng, 4000, 8)
    for x in (torch.tensor(1000.0 + 1e-9 * z, dtype=torch.float64), torch.tensor(1e-25 * np.exp(0.1 * z))):
        metric = ClassSimilarity(8)
        out = feed(metric, x, 500)
        assert metric.constant_classes.numel() == 0
        np.testing.assert_allclose(out, ref_corr(x.double().numpy()), atol=1e-5)


def test_never_a_nan_without_an_error(rng):
    x = torch.tensor(correlated_scores(rng, 500, 6), dtype=torch.float64) * 1e160  # squares overflow float64
    with pytest.raises(ValueError, match=r"came out non-finite: the scores' spread is too large for float64"):
        feed(ClassSimilarity(6), x, 100)


@pytest.mark.parametrize("strategy", ["error", "skip"])
def test_ranks_with_nan_are_refused_or_skipped_as_logits_are(rng, strategy):
    x = correlated_scores(rng, 1000, 8)
    bad = x.copy()
    bad[::2, 3] = np.nan  # half the rows: a NaN ranked as the top score was off by 0.43
    metric = ClassSimilarity(8, scores="ranks", nan_strategy=strategy)
    if strategy == "error":
        with pytest.raises(ValueError, match=r"only finite scores, but some batches contained NaN"):
            feed(metric, torch.tensor(bad), 100)
        return
    out = feed(metric, torch.tensor(bad), 100)
    assert metric.num_skipped == 500
    np.testing.assert_allclose(out, ref_corr(rankdata(x[1::2], axis=1)), atol=1e-5)


def test_merge_of_a_metric_state_dict_keeps_the_unfolded_rows(rng):
    x = torch.tensor(correlated_scores(rng, 900, 6) + 50, dtype=torch.float32)
    a, b = ClassSimilarity(6), ClassSimilarity(6)
    a.update(x[:300])
    b.update(x[300:])  # still in b's unfolded block
    a.merge_state(b.metric_state)
    np.testing.assert_allclose(a.compute().numpy(), ref_corr(x.double().numpy()), atol=1e-5)


def test_merge_of_different_metrics_is_refused(rng):
    x = torch.randn(50, 6)
    ranks = ClassSimilarity(6, scores="ranks")
    ranks.update(x)
    logits = ClassSimilarity(6)
    logits.update(x)
    with pytest.raises(ValueError, match=r"same \(num_classes, scores, multilabel\) to merge, but got \(6, 'ranks', "):
        logits.merge_state(ranks)
    with pytest.raises(ValueError, match=r"states of a ClassSimilarity over 6 classes, but its 'stats' is \(31,\)"):
        logits.merge_state(ClassSimilarity(5).metric_state)


def test_a_state_dict_of_other_classes_does_not_load():
    five = ClassSimilarity(5)
    five.persistent(True)
    five.update(torch.randn(20, 5))
    four = ClassSimilarity(4)
    four.persistent(True)
    with pytest.raises(ValueError, match=r"`state_dict` to hold the states of a ClassSimilarity over 4 classes"):
        four.load_state_dict(five.state_dict())


def test_mixed_dtypes_and_inference_mode(rng):
    x = correlated_scores(rng, 600, 7)
    metric = ClassSimilarity(7)
    with torch.inference_mode():  # as Lightning's validation loop
        metric.update(torch.tensor(x[:200], dtype=torch.float32))
    metric.update(torch.tensor(x[200:400], dtype=torch.float64))  # outside it, and another dtype
    metric.update(torch.tensor(x[400:], dtype=torch.float32))
    with torch.inference_mode():
        out = metric.compute()
    expected = np.concatenate([x[:200].astype(np.float32), x[200:400], x[400:].astype(np.float32)])
    np.testing.assert_allclose(out.numpy(), ref_corr(expected), atol=1e-5)
    metric.reset()
    with torch.inference_mode():
        metric.reset()
        metric.update(torch.tensor(x, dtype=torch.float32))
    metric.update(torch.tensor(x, dtype=torch.float32))  # outside: states made inside are usable
    np.testing.assert_allclose(metric.compute().numpy(), ref_corr(np.concatenate([x, x]).astype(np.float32)), atol=1e-5)


def test_forward_on_a_one_row_batch(rng):
    x = torch.tensor(correlated_scores(rng, 300, 5), dtype=torch.float32)
    metric = ClassSimilarity(5)
    with pytest.warns(UserWarning, match=r"forward got a batch of 1 row: it is added to the running state"):
        assert metric(x[:1]) is None
    batch = metric(x[1:])
    np.testing.assert_allclose(batch.numpy(), ref_corr(x[1:].double().numpy()), atol=1e-5)
    np.testing.assert_allclose(metric.compute().numpy(), ref_corr(x.double().numpy()), atol=1e-5)


def test_strict_bools_and_integer_like_class_counts():
    with pytest.raises(ValueError, match=r"`multilabel` to be True or False, but got 'no'"):
        ClassSimilarity(5, multilabel="no")  # type: ignore[arg-type]
    assert ClassSimilarity(np.int64(5)).num_classes == 5
    assert ClassSimilarity(torch.tensor(5)).num_classes == 5
    with pytest.raises(ValueError, match=r"`num_classes` to be an int larger than 1, but got tensor\(5\.\)"):
        ClassSimilarity(torch.tensor(5.0))
    assert class_similarity(torch.randn(10, 3)).shape == (3, 3)


def test_error_table_against_offset_and_batch_size(rng):
    """The figures of docs/metric.md's table: float32 scores, m = 16, N = 3,000 (regenerate with this test's body)."""
    z = correlated_scores(rng, 3000, 16)
    worst = 0.0
    for offset in (0.0, 1e3, 1e6):
        x = torch.tensor(z + offset, dtype=torch.float32)
        ref = ref_corr(x.double().numpy())
        for batch in (1, 16, 256, 3000):
            worst = max(worst, np.abs(feed(ClassSimilarity(16), x, batch) - ref).max())
    assert worst <= 1e-6
