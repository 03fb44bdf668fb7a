"""Bad values that used to pass silently or crash: the head route, the metric's states, loaded results, a damaged
checkpoint. Each reference comes from numpy."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import lightning_net
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim import ClassSimilarity, ClassSimilarityCallback, HeadSimilarity, StructureResult, analyze
from lightning_classim.runs import load_run


def features_and_head(n=500, d=8, m=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)


def test_a_head_weight_with_nan_or_inf_is_refused_naming_the_classes():
    x, w = features_and_head()
    metric = HeadSimilarity(8)
    metric.update(x)
    w[3, 1] = float("nan")
    w[1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"weight of the head 'weight' to be finite, but it holds 2 NaN or infinite "
                                         r"values \(classes \[1, 3\]\)\. The training diverged"):  # fmt: skip
        metric.compute(w)
    with pytest.raises(ValueError, match=r"the bias of the head 'weight' to be finite"):
        metric.compute(torch.ones(5, 8), torch.tensor([0.0, float("nan"), 0, 0, 0]))


def test_a_class_with_a_tiny_weight_is_a_class_like_any_other():
    x, w = features_and_head()
    w[2] *= 1e-13  # r is scale-free: its row is as defined as the others'
    metric = HeadSimilarity(8)
    metric.update(x)
    got = metric.compute(w).matrix().double().numpy()
    np.testing.assert_allclose(got, np.corrcoef((x @ w.T).numpy(), rowvar=False), atol=1e-6)
    assert metric.constant_classes.tolist() == []


def test_a_class_whose_weight_sees_no_variance_is_constant():
    x, w = features_and_head()
    x[:, 5] = 3.0  # one feature never varies
    w[4] = 0.0
    w[4, 5] = 2.0  # class 4 reads only that feature: its logit is constant
    metric = HeadSimilarity(8)
    metric.update(x)
    metric.compute(w)
    assert metric.constant_classes.tolist() == [4]


def test_huge_features_give_the_exact_matrix_or_a_clear_error():
    x, w = features_and_head()
    metric = HeadSimilarity(8)
    metric.update(x * 1e100)  # squares of 1e200: still inside float64
    np.testing.assert_allclose(metric.compute(w).matrix().double().numpy(),
                               np.corrcoef((x @ w.T).numpy(), rowvar=False), atol=1e-6)  # fmt: skip
    metric = HeadSimilarity(8)
    metric.update(x * 1e200)
    with pytest.raises(ValueError, match=r"covariance fits float64, but it overflowed .* Scale the head's input down"):
        metric.compute(w)


class LinearOnFirstRows(nn.Module):
    """Linear on the first 4 rows of a batch, scaled on the others (what a check of 4 rows cannot see)."""

    def __init__(self, d, m):
        super().__init__()
        self.inner = nn.Linear(d, m)
        self.weight, self.bias = self.inner.weight, self.inner.bias

    def forward(self, x):
        out = self.inner(x)
        return torch.cat([out[:4], 3 * out[4:]])


def test_a_head_non_linear_beyond_its_first_rows_is_refused(tmp_path):
    model = lightning_net(pl, 8, 16, 6)
    model.fc = LinearOnFirstRows(16, 6)
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 6, (64,), generator=g)),
                        batch_size=32)  # fmt: skip
    cb = ClassSimilarityCallback(6, head="fc", save_dir=tmp_path)
    trainer = pl.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"the output of 'fc' is not `input @ weight.T \+ bias`"):
        trainer.validate(model, loader, verbose=False)


def test_the_states_of_other_scores_are_not_merged():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    logits, ranks = ClassSimilarity(4), ClassSimilarity(4, scores="ranks")
    logits.update(x)
    ranks.update(x)
    with pytest.raises(ValueError, match=r"holds those of \(scores, multilabel\) = \('ranks', False\) and this metric "
                                         r"correlates \('logits', False\)"):  # fmt: skip
        logits.merge_state(ranks.metric_state)
    other = ClassSimilarity(4)
    other.update(x[:100])
    mine = ClassSimilarity(4)
    mine.update(x[100:])
    mine.merge_state(other.metric_state)  # the same scores: merged exactly
    np.testing.assert_allclose(mine.compute().double().numpy(), np.corrcoef(x.double().numpy(), rowvar=False),
                               atol=1e-6)  # fmt: skip


def test_scores_of_a_subnormal_spread_are_correlated_not_called_nan():
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0)) * 1e-40  # float32 subnormals
    metric = ClassSimilarity(4)
    metric.update(x)
    np.testing.assert_allclose(metric.compute().double().numpy(), np.corrcoef(x.double().numpy(), rowvar=False),
                               atol=1e-6)  # fmt: skip


def test_loaded_class_vectors_must_be_unit_rows():
    sim = np.corrcoef(np.random.default_rng(0).standard_normal((6, 50)))
    result = analyze(sim, n_groups=2)
    arrays = {k: v for k, v in result.arrays().items() if k != "similarity"}
    for bad, why in ((np.eye(6, 4) * 2, "unit class vectors"), (np.full((6, 4), np.nan), "unit class vectors")):
        with pytest.raises(ValueError, match=why):
            StructureResult.from_parts({**arrays, "vectors": bad.astype(np.float32)}, result.to_dict(),
                                       list(result.class_names))  # fmt: skip
    good = np.eye(6, 6, dtype=np.float32)
    assert StructureResult.from_parts({**arrays, "vectors": good}, result.to_dict(), list(result.class_names)).embedded


def test_a_run_json_that_is_not_an_object_is_a_clear_error(tmp_path):
    from lightning_classim.artifacts import write_run_info, write_snapshot
    from lightning_classim.runs import RunError

    write_snapshot(tmp_path, 0, 0, analyze(np.corrcoef(np.random.default_rng(0).standard_normal((6, 50)))), None)
    write_run_info(tmp_path, {"num_classes": 6})
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(RunError, match=r"run.json is corrupt: it holds a list, not a JSON object"):
        load_run(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [lambda s: s["results"]["scores"].pop("summary"), lambda s: s.update(validations="3"),
     lambda s: s["results"]["scores"]["summary"].update(groups=[{"group": "x"}]), lambda s: s.update(version="2"),
     lambda s: s.update(streams={"nope": {}})],
)  # fmt: skip
def test_a_damaged_callback_state_in_a_checkpoint_is_warned_and_the_fit_resumes(tmp_path, damage):
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 6, (64,), generator=g)),
                        batch_size=32)  # fmt: skip
    opts = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    cb = ClassSimilarityCallback(6, save_dir=tmp_path / "run")
    trainer = pl.Trainer(max_epochs=1, callbacks=[cb], **opts)
    trainer.fit(lightning_net(pl, 8, 16, 6), loader, loader)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("ClassSimilarityCallback")]
    damage(ckpt["callbacks"][key])
    torch.save(ckpt, path)
    again = ClassSimilarityCallback(6, save_dir=tmp_path / "run2")
    with pytest.warns(UserWarning, match=r"the checkpoint's state of this callback is damaged and is not restored"):
        pl.Trainer(max_epochs=2, callbacks=[again], **opts).fit(lightning_net(pl, 8, 16, 6), loader, loader,
                                                                ckpt_path=path)  # fmt: skip
    assert [h["epoch"] for h in again.history] == [1]
