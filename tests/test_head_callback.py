"""ClassSimilarityCallback(head=...): the head route in real Trainer runs, on disk, in the CLI and under DDP."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import lightning_net
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim import ClassSimilarity, ClassSimilarityCallback, StructureOptions
from lightning_classim.artifacts import list_snapshots, load_snapshot
from lightning_classim.cli import main as classim
from lightning_classim.sources import HeadSource, as_source

L = pytest.importorskip("lightning.pytorch", reason="the `lightning` package is not installed")

M, D = 4200, 24  # above 4,096 classes: the analysis without the m x m matrix


def make_model(namespace, m: int = M):
    return lightning_net(namespace, 8, D, m, activation=nn.Tanh, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))


def data(m: int = M):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 8, generator=g)
    y = torch.randint(0, m, (600,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=128), x


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pytorch_lightning", "lightning.pytorch"])
def test_head_route_fit_writes_vectors_logs_and_reads_back_in_the_cli(tmp_path, name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    namespace = pl if name == "pytorch_lightning" else L
    loader, x = data()
    logger = namespace.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    cb = ClassSimilarityCallback(M, head="fc", options=StructureOptions(method="average", find_failed=False))
    assert [type(s) for s in cb.sources] == [HeadSource] and cb.metric is None  # no m x m state, made at a batch
    model = make_model(namespace)
    trainer = namespace.Trainer(max_epochs=2, limit_train_batches=2, logger=logger, callbacks=[cb],
                                enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader, loader)
    folders = list_snapshots(cb.save_dir)
    assert len(folders) == 2
    assert (folders[-1] / "vectors.npy").exists() and not (folders[-1] / "similarity.npy").exists()
    snap = load_snapshot(folders[-1])
    assert snap.result.embedded and snap.result.vectors.shape[0] == M
    with torch.no_grad():
        logits = model(x).double().numpy()
    rows = [0, 17, M - 1]
    reference = np.corrcoef(logits, rowvar=False)[rows]
    np.testing.assert_allclose(snap.result.matrix(rows), reference, atol=1e-5)
    assert cb.last_result is not None and cb.last_result.embedded
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert len(acc.Images("classim/heatmap")) == 2
    assert {"classim/n_groups", "classim/drift", "classim/cophenetic_corr"} <= set(tags["scalars"])
    # the run reads back in every command
    run = str(cb.save_dir)
    assert classim(["report", run]) == 0 and (cb.save_dir / "report" / "heatmaps.png").exists()
    assert classim(["export", run, "--out", str(tmp_path / "tree.json")]) == 0
    assert classim(["explore", run]) == 0 and (cb.save_dir / "explorer.html").stat().st_size > 10_000
    assert classim(["compare", run, run]) == 0


def test_head_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Expected scores='logits' with `head='fc'`.*got scores='probs'"):
        ClassSimilarityCallback(10, head="fc", scores="probs")
    with pytest.raises(ValueError, match=r"Expected argument `head` to name the final linear layer.*got ''"):
        ClassSimilarityCallback(10, head="")
    with pytest.raises(ValueError, match=r"Expected argument `module` to name the head, a submodule, but got ''"):
        HeadSource("")
    assert as_source("head:fc").module == "fc"
    # 50,000 classes: no dense state is made with the head route; without it, the error names the way out
    assert [s.name for s in ClassSimilarityCallback(50_000, head="fc").sources] == ["head:fc"]
    with pytest.raises(ValueError, match=r"at most 40,000 for the dense matrix.*ClassSimilarityCallback\(head="):
        ClassSimilarity(50_000)
    # "scores" beside other sources is replaced in place; the head of a module without class rows fails at set-up
    cb = ClassSimilarityCallback(12, head="body", sources=["weights:fc", "scores"], save_dir=tmp_path)
    assert [s.name for s in cb.sources] == ["weights:fc", "head:body"]
    loader, _ = data(12)
    trainer = pl.Trainer(max_epochs=1, logger=False, callbacks=[cb], enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"Expected the head 'body' to have a weight of shape \(12, D\)"):
        trainer.validate(make_model(pl, 12), loader, verbose=False)


DDP_SCRIPT = Path(__file__).with_name("ddp_validate_script.py")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [None, "one_rank_empty"])
def test_ddp_head_route_is_numpys_correlation_of_the_logits(tmp_path, sampler):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    args = [sys.executable, str(DDP_SCRIPT), str(tmp_path), "2", "head:fc"] + ([sampler] if sampler else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_snapshot(list_snapshots(tmp_path / "classim")[0]).result.similarity
    if sampler is None:  # the same as the dense route in one process
        single = tmp_path / "one"
        proc = subprocess.run([sys.executable, str(DDP_SCRIPT), str(single), "1", "scores"], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        dense = load_snapshot(list_snapshots(single / "classim")[0]).result.similarity
        np.testing.assert_allclose(got, dense, atol=1e-5)
    else:
        reference = np.load(tmp_path / "logits.npy")
        np.testing.assert_allclose(got, np.corrcoef(reference, rowvar=False), atol=1e-5)


class CosineHead(nn.Module):
    """A cosine classifier: a weight of one row per class, but not linear in its input."""

    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(m, d))

    def forward(self, x):
        return 10 * nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=1).T


def test_a_head_that_is_not_linear_is_refused_not_misread(tmp_path):
    model = make_model(pl, 12)
    model.fc = CosineHead(D, 12)
    loader, _ = data(12)
    cb = ClassSimilarityCallback(12, head="fc", save_dir=tmp_path)
    trainer = pl.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"the output of 'fc' is not `input @ weight.T \+ bias`"):
        trainer.validate(model, loader, verbose=False)
    # in fit, the sanity check's probe finds it before the first training epoch
    again = ClassSimilarityCallback(12, head="fc", save_dir=tmp_path)
    trainer = pl.Trainer(max_epochs=1, logger=False, callbacks=[again], enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"the output of 'fc' is not `input @ weight.T \+ bias`"):
        trainer.fit(model, loader, loader)
    assert trainer.global_step == 0


class WidthChangingHead(nn.Module):
    """A weight of one row per class, but the input it is fed is not the width its weight reads."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.inner = nn.Linear(D, D)
        self.weight = nn.Parameter(torch.randn(m, 2 * D))

    def forward(self, x):
        return self.inner(x) @ self.weight[:, :D].T


def test_head_source_errors_name_the_problem(tmp_path):
    from lightning_classim.sources import SourceContext

    loader, _ = data(12)
    model = make_model(pl, 12)
    model.fc = WidthChangingHead(12)
    trainer = pl.Trainer(logger=False, callbacks=[ClassSimilarityCallback(12, head="fc", save_dir=tmp_path)],
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"the head 'fc' maps inputs of shape \(\d+, 24\) to outputs of shape"):
        trainer.validate(model, loader, verbose=False)
    # the source named as a string, with scores that are not logits: refused at set-up
    cb = ClassSimilarityCallback(12, sources=["head:fc"], scores="probs", save_dir=tmp_path)
    trainer = pl.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(
        ValueError, match=r"correlates the logits of a linear head, but the callback has scores='probs'"
    ):
        trainer.validate(make_model(pl, 12), loader, verbose=False)
    # no process saw a batch
    ctx = SourceContext(12, module=make_model(pl, 12))
    with pytest.raises(ValueError, match=r"Source 'head:fc' saw no input of 'fc' on any process in this epoch"):
        HeadSource("fc").compute(None, ctx)
