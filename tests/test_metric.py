import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import correlated_scores
from scipy.special import expit, softmax
from scipy.stats import rankdata

from lightning_classim import ClassSimilarity, class_similarity


def ref_corr(values: np.ndarray) -> np.ndarray:
    return np.corrcoef(np.asarray(values, dtype=np.float64), rowvar=False)


def feed(metric: ClassSimilarity, x: torch.Tensor, batch: int) -> torch.Tensor:
    for b in x.split(batch):
        metric.update(b)
    return metric.compute()


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_logits_match_numpy_over_many_batches_with_offset_and_scales(rng, offset):
    x = correlated_scores(rng, 6000, 40) * np.logspace(0, 3, 40) + offset  # class scales differ by 1000x
    xt = torch.tensor(x, dtype=torch.float32)
    ref = ref_corr(xt.double().numpy())
    out = feed(ClassSimilarity(40), xt, 256)
    assert out.dtype == torch.float32 and out.shape == (40, 40)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5, rtol=0)
    assert torch.equal(out, out.T)
    assert torch.all(out.diagonal() == 1)


def test_naive_float32_sums_fail_where_the_metric_does_not(rng):
    # guards the test above: with offset 1000 the plain float32 formula is far off, so the data is hard enough
    x = torch.tensor(correlated_scores(rng, 6000, 40) + 1000.0, dtype=torch.float32)
    n, s1, s2 = x.shape[0], x.sum(0), x.T @ x
    cov = s2 / n - torch.outer(s1 / n, s1 / n)
    d = cov.diagonal().clamp(min=1e-12).sqrt()
    naive = (cov / d[:, None] / d[None, :]).numpy()
    assert np.abs(naive - ref_corr(x.double().numpy())).max() > 1e-2


def test_batch_split_does_not_matter(rng):
    xt = torch.tensor(correlated_scores(rng, 3000, 25) + 500.0, dtype=torch.float32)
    ref = ref_corr(xt.double().numpy())
    for batch in (1, 7, 256, 3000):
        metric = ClassSimilarity(25)
        metric.block_rows = 512  # several folds even for small inputs
        np.testing.assert_allclose(feed(metric, xt, batch).numpy(), ref, atol=1e-5, rtol=0)


def test_many_folds_accumulate(rng):
    xt = torch.tensor(correlated_scores(rng, 20000, 12) - 300.0, dtype=torch.float32)
    np.testing.assert_allclose(feed(ClassSimilarity(12), xt, 100).numpy(), ref_corr(xt.double().numpy()), atol=1e-5)


def test_probs_softmax_and_sigmoid(rng):
    x = correlated_scores(rng, 2000, 10)
    xt = torch.tensor(x, dtype=torch.float32)
    x32 = xt.double().numpy()
    out = feed(ClassSimilarity(10, scores="probs"), xt, 300)
    np.testing.assert_allclose(out.numpy(), ref_corr(softmax(x32, axis=1)), atol=1e-5)
    out = feed(ClassSimilarity(10, scores="probs", multilabel=True), xt, 300)
    np.testing.assert_allclose(out.numpy(), ref_corr(expit(x32)), atol=1e-5)


def test_ranks_are_spearman_per_sample_ranks(rng):
    xt = torch.tensor(correlated_scores(rng, 2000, 30), dtype=torch.float32)
    ranks = rankdata(xt.double().numpy(), axis=1)  # average ranks 1..m within each sample
    out = feed(ClassSimilarity(30, scores="ranks"), xt, 128)
    np.testing.assert_allclose(out.numpy(), ref_corr(ranks), atol=1e-5)


def test_ranks_ties_from_bfloat16_take_the_average_rank(rng):
    xt = torch.tensor(np.round(correlated_scores(rng, 1500, 20), 0), dtype=torch.bfloat16)
    ranks = rankdata(xt.double().numpy(), axis=1)
    assert (ranks % 1 == 0.5).any(), "the data must contain ties"
    out = feed(ClassSimilarity(20, scores="ranks"), xt, 128)
    np.testing.assert_allclose(out.numpy(), ref_corr(ranks), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(rng, dtype):
    xt = torch.tensor(correlated_scores(rng, 2500, 16) + 20.0, dtype=dtype)
    out = feed(ClassSimilarity(16), xt, 256)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref_corr(xt.double().numpy()), atol=1e-5)


def test_functional_matches_numpy_and_metric(rng):
    xt = torch.tensor(correlated_scores(rng, 1000, 9) + 1000.0, dtype=torch.float32)
    ref = ref_corr(xt.double().numpy())
    np.testing.assert_allclose(class_similarity(xt).numpy(), ref, atol=1e-5)
    ranks = rankdata(xt.double().numpy(), axis=1)
    np.testing.assert_allclose(class_similarity(xt, scores="ranks").numpy(), ref_corr(ranks), atol=1e-5)


def test_reset_forgets_everything(rng):
    a = torch.tensor(correlated_scores(rng, 800, 8), dtype=torch.float32)
    b = torch.tensor(correlated_scores(rng, 900, 8) * 3 + 7, dtype=torch.float32)
    metric = ClassSimilarity(8)
    feed(metric, a, 100)
    metric.reset()
    np.testing.assert_allclose(feed(metric, b, 100).numpy(), ref_corr(b.double().numpy()), atol=1e-5)


def test_forward_returns_the_batch_value_and_accumulates(rng):
    a = torch.tensor(correlated_scores(rng, 700, 6), dtype=torch.float32)
    metric = ClassSimilarity(6)
    first = metric(a[:300])
    np.testing.assert_allclose(first.numpy(), ref_corr(a[:300].double().numpy()), atol=1e-5)
    metric(a[300:])
    np.testing.assert_allclose(metric.compute().numpy(), ref_corr(a.double().numpy()), atol=1e-5)


def test_merge_state_of_two_metrics(rng):
    a = torch.tensor(correlated_scores(rng, 900, 6) + 100, dtype=torch.float32)
    m1, m2 = ClassSimilarity(6), ClassSimilarity(6)
    m1.update(a[:400])
    m2.update(a[400:])
    m1.merge_state(m2)
    np.testing.assert_allclose(m1.compute().numpy(), ref_corr(a.double().numpy()), atol=1e-5)


def test_states_are_not_saved_by_default_and_are_when_persistent(rng):
    a = torch.tensor(correlated_scores(rng, 500, 5), dtype=torch.float32)
    metric = ClassSimilarity(5)
    metric.update(a)
    assert metric.state_dict() == {}
    metric.persistent(True)
    sd = metric.state_dict()
    assert set(sd) == {"stats", "vmin", "vmax", "skipped"}
    assert sd["stats"][0].item() == 500  # the pending block was folded before saving
    restored = ClassSimilarity(5)
    restored.persistent(True)
    restored.load_state_dict(sd)
    restored._update_count = 1
    np.testing.assert_allclose(restored.compute().numpy(), ref_corr(a.double().numpy()), atol=1e-5)


def test_state_size_does_not_grow_with_samples(rng):
    metric = ClassSimilarity(20)

    def nbytes() -> int:
        states = [getattr(metric, k) for k in metric._defaults]
        block = [] if metric._block is None else [t for t in metric._block if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in states + block)

    metric.update(torch.randn(100, 20))
    first = nbytes()
    for _ in range(100):
        metric.update(torch.randn(100, 20))
    assert nbytes() == first
    assert first <= 8 * 20 * 20 + 40 * 20 + 4 * 20 * 20 + 12 * 20 + 64


def test_constant_classes_policy_zero_and_report(rng):
    x = correlated_scores(rng, 1000, 6) + 1000.0
    x[:, 2] = 1000.1  # constant (and not exactly representable)
    x[:, 4] = -3.0
    xt = torch.tensor(x, dtype=torch.float32)
    metric = ClassSimilarity(6)
    metric.update(xt[:333])
    metric.update(xt[333:])
    with pytest.warns(UserWarning, match=r"2 classes had a constant score .*\[2, 4\]"):
        out = metric.compute()
    assert metric.constant_classes.tolist() == [2, 4]
    assert not torch.isnan(out).any()
    assert torch.all(out[2, [0, 1, 3, 4, 5]] == 0) and torch.all(out[:, 4][[0, 1, 2, 3, 5]] == 0)
    assert out[2, 2] == 1 and out[4, 4] == 1
    keep = [0, 1, 3, 5]
    np.testing.assert_allclose(out.numpy()[np.ix_(keep, keep)], ref_corr(xt.double().numpy()[:, keep]), atol=1e-5)


def test_constant_classes_policy_nan(rng):
    x = correlated_scores(rng, 300, 4)
    x[:, 1] = 5.0
    with pytest.warns(UserWarning, match="set to NaN"):
        out = class_similarity(torch.tensor(x, dtype=torch.float32), undefined="nan")
    assert torch.isnan(out[1]).all() and torch.isnan(out[:, 1]).all()
    assert not torch.isnan(out[[0, 2, 3]][:, [0, 2, 3]]).any()


def test_nan_strategy_skip_leaves_rows_out_and_counts_them(rng):
    x = correlated_scores(rng, 1200, 7) + 50
    bad = [0, 5, 400, 1199]
    x[0, 3] = np.nan
    x[5, 0] = np.inf
    x[400, :] = np.nan
    x[1199, 6] = -np.inf
    xt = torch.tensor(x, dtype=torch.float32)
    metric = ClassSimilarity(7, nan_strategy="skip")
    out = feed(metric, xt, 100)
    good = np.delete(xt.double().numpy(), bad, axis=0)
    np.testing.assert_allclose(out.numpy(), ref_corr(good), atol=1e-5)
    assert metric.num_skipped == 4
    np.testing.assert_allclose(class_similarity(xt, nan_strategy="skip").numpy(), ref_corr(good), atol=1e-5)


def test_no_warning_in_the_normal_case(rng):
    xt = torch.tensor(correlated_scores(rng, 300, 5), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(ClassSimilarity(5), xt, 64)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("bad", [0, 1, -3, 2.5, True, "10", None])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match=rf"`num_classes` to be an int larger than 1, but got {bad!r}"):
        ClassSimilarity(bad)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"scores": "softmax"}, r"`scores` to be one of \['logits', 'probs', 'ranks'\], but got 'softmax'"),
        ({"nan_strategy": "ignore"}, r"`nan_strategy` to be one of \['error', 'skip'\], but got 'ignore'"),
        ({"undefined": 0}, r"`undefined` to be one of \['zero', 'nan'\], but got 0"),
    ],
)
def test_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ClassSimilarity(5, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        class_similarity(torch.randn(4, 5), **kwargs)


def test_wrong_ndim():
    with pytest.raises(
        ValueError, match=r"`preds` to have 2 dimensions .* but got 3 dimensions with shape \(2, 3, 5\)"
    ):
        ClassSimilarity(5).update(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"but got 1 dimensions"):
        class_similarity(torch.randn(5))


def test_wrong_width():
    with pytest.raises(ValueError, match=r"num_classes=5 columns, but got shape \(8, 4\)"):
        ClassSimilarity(5).update(torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"at least 2 class columns, but got shape \(8, 1\)"):
        class_similarity(torch.randn(8, 1))


def test_integer_preds():
    with pytest.raises(TypeError, match=r"floating point tensor of scores, but got dtype torch.int64"):
        ClassSimilarity(5).update(torch.randint(0, 5, (8, 5)))
    with pytest.raises(TypeError, match=r"`preds` to be a torch.Tensor, but got ndarray"):
        class_similarity(np.zeros((3, 3)))  # type: ignore[arg-type]


def test_fewer_than_two_samples():
    metric = ClassSimilarity(3)
    metric.update(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"at least 2 samples with finite scores .* but got 1"):
        metric.compute()
    with pytest.raises(ValueError, match=r"but got 0"), pytest.warns(UserWarning, match="before the ``update``"):
        ClassSimilarity(3).compute()


def test_non_finite_scores_raise_by_default():
    x = torch.randn(50, 4)
    x[10, 2] = float("nan")
    metric = ClassSimilarity(4)
    metric.update(x)
    with pytest.raises(ValueError, match=r"only finite scores.*nan_strategy='skip'"):
        metric.compute()
    x[10, 2] = float("inf")
    with pytest.raises(ValueError, match=r"only finite scores"):
        class_similarity(x)


def test_empty_batch_is_ignored(rng):
    xt = torch.tensor(correlated_scores(rng, 100, 4), dtype=torch.float32)
    metric = ClassSimilarity(4)
    metric.update(torch.zeros(0, 4))
    np.testing.assert_allclose(feed(metric, xt, 30).numpy(), ref_corr(xt.double().numpy()), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_update_stays_on_device_without_host_sync(rng):
    x = torch.tensor(correlated_scores(rng, 5000, 64) + 1000, dtype=torch.float32, device="cuda")
    metric = ClassSimilarity(64, scores="ranks")
    metric.update(x[:10])  # moves the states to the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in x[10:].split(256):
            metric.update(b)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert metric.stats.device.type == "cuda"
    np.testing.assert_allclose(
        metric.compute().cpu().numpy(), ref_corr(rankdata(x.double().cpu().numpy(), axis=1)), atol=1e-5
    )


# ------------------------------------------------------------------------------------------------ DDP


def _ddp_worker(rank: int, world: int, init_file: str, shards: list, out_dir: str, scores: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = ClassSimilarity(shards[0][0].shape[1] if shards[0] else shards[1][0].shape[1], scores=scores)
        for batch in shards[rank]:
            metric.update(batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the empty rank warns that compute came before update
            out = metric.compute()
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_ddp(tmp_path: Path, shards: list, scores: str = "logits") -> list[torch.Tensor]:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), shards, str(tmp_path), scores), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["uneven", "empty_rank1", "empty_rank0"])
def test_ddp_two_processes_equal_single_process(tmp_path, rng, layout):
    x = torch.tensor(correlated_scores(rng, 3100, 15) + 1000.0, dtype=torch.float32)
    if layout == "uneven":
        shards = [list(x[:2500].split(256)), list(x[2500:].split(100))]  # 10 batches vs 6 batches
    elif layout == "empty_rank1":
        shards = [list(x.split(256)), []]
    else:
        shards = [[], list(x.split(256))]
    single = feed(ClassSimilarity(15), x, 256)
    outs = _run_ddp(tmp_path, shards)
    for out in outs:  # every rank gets the merged result
        np.testing.assert_allclose(out.numpy(), single.numpy(), atol=1e-5)
        np.testing.assert_allclose(out.numpy(), ref_corr(x.double().numpy()), atol=1e-5)


@pytest.mark.slow
def test_ddp_ranks_with_different_batch_sizes(tmp_path, rng):
    x = torch.tensor(correlated_scores(rng, 1000, 12), dtype=torch.float32)
    shards = [list(x[:300].split(7)), list(x[300:].split(512))]
    outs = _run_ddp(tmp_path, shards, scores="ranks")
    np.testing.assert_allclose(outs[0].numpy(), ref_corr(rankdata(x.double().numpy(), axis=1)), atol=1e-5)


@pytest.mark.slow
def test_inside_a_lightning_module(rng):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.tensor(correlated_scores(rng, 900, 6) + 100, dtype=torch.float32)
    results = []

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.similarity = ClassSimilarity(6)  # an attribute: moves with the module

        def validation_step(self, batch, batch_idx):
            self.similarity.update(batch[0])

        def on_validation_epoch_end(self):
            results.append(self.similarity.compute())
            self.similarity.reset()

    module = Module()
    assert "similarity.stats" not in module.state_dict()  # states are not checkpointed (documented choice)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(TensorDataset(x), batch_size=128), verbose=False)
    np.testing.assert_allclose(results[0].numpy(), ref_corr(x.double().numpy()), atol=1e-5)
