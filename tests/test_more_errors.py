import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_classim import ClassSimilarity, ClassSimilarityCallback, MetricSource, analyze, render_heatmap
from lightning_classim.artifacts import write_run_info, write_snapshot
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.runs import RunError, export_tree, find_run, load_run, reference_order
from lightning_classim.sources import LabelCooccurrence


def snapshot(folder, m, epoch):
    write_snapshot(folder, epoch, epoch, analyze(np.eye(m), n_groups=1, find_failed=False), None)


def test_run_path_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RunError, match=r"f.txt is not a folder"):
        find_run(tmp_path / "f.txt")


def test_run_with_epochs_of_different_sizes(tmp_path):
    write_run_info(tmp_path, {"num_classes": 4})
    snapshot(tmp_path, 4, 0)
    snapshot(tmp_path, 5, 1)
    with pytest.raises(RunError, match=r"mixes epochs with different numbers of classes: \[4, 5\]"):
        load_run(tmp_path)


def test_reference_run_of_another_size(tmp_path):
    write_run_info(tmp_path, {"num_classes": 4})
    snapshot(tmp_path, 4, 0)
    with pytest.raises(RunError, match=r"reference order covers 4 classes, but this run has 6"):
        reference_order(str(tmp_path), 6)
    with pytest.raises(ValueError, match=r"`order` to be a 1-d integer permutation of range\(6\), but got dtype <U"):
        render_heatmap(np.eye(6), order=str(tmp_path))  # a folder is no order: resolve it with reference_order


def test_export_unknown_format(tmp_path):
    with pytest.raises(RunError, match=r"Unknown export format 'xml'; use 'json' or 'newick'"):
        export_tree(tmp_path, "xml")


def test_targets_that_are_not_tensors():
    with pytest.raises(TypeError, match=r"`target` to be a torch.Tensor, but got list"):
        LabelCooccurrence(3).update([0, 1])  # type: ignore[arg-type]


class WithUnused(DemoClassifier):
    def __init__(self) -> None:
        super().__init__(in_dim=16, num_classes=12, hidden=32)
        self.unused = nn.Linear(32, 12)  # never called in forward


def validate(tmp_path, callback, loader):
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False)
    trainer.validate(WithUnused(), loader, verbose=False)


def test_hooked_module_that_never_runs(tmp_path):
    _, val, _, _ = loaders(n_per_class=10, superclasses=3, subclasses=4, dim=16)
    with pytest.raises(ValueError, match=r"module='unused'\) captured no output in this validation step"):
        validate(tmp_path, ClassSimilarityCallback(12, module="unused", save_dir=tmp_path), val)
    cb = ClassSimilarityCallback(12, sources=["scores", "features:unused"], save_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Source 'features:unused' captured no output of module 'unused'"):
        validate(tmp_path, cb, val)
    own = MetricSource("own", ClassSimilarity(12), inputs=("features:unused",))
    cb = ClassSimilarityCallback(12, sources=["scores", own], save_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Source 'own' captured no output of module 'unused'"):
        validate(tmp_path, cb, val)


def test_targets_in_the_batch_that_are_not_tensors(tmp_path):
    class ListTargets(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i):
            return {"x": torch.randn(16), "labels": "cat"}

    class DictBatch(WithUnused):
        def validation_step(self, batch, batch_idx):
            return self(batch["x"])

    cb = ClassSimilarityCallback(12, sources=["scores", "cooccurrence"], target_key="labels", save_dir=tmp_path)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"targets at target_key='labels' of the batch to be a tensor, but got list"):
        trainer.validate(DictBatch(), DataLoader(ListTargets(), batch_size=4), verbose=False)
