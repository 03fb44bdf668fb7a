"""The callback under faults and awkward set-ups: a crash mid-write, a full disk, two writers, a slow analysis,
several dataloaders, repeated validations, the test set, the sanity check, DDP samplers that pad."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_classim import ClassSimilarityCallback
from lightning_classim.artifacts import list_snapshots, load_snapshot
from lightning_classim.callback._callback import MAX_PENDING
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.runs import load_run

M = 12
SCRIPT = Path(__file__).with_name("fault_fit_script.py")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}


def small():
    return loaders(n_per_class=40, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)


class Classifier(DemoClassifier):
    """The demo's classifier, with the `dataloader_idx` that several validation loaders need."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])


def model(seed: int = 0) -> DemoClassifier:
    pl.seed_everything(seed)
    return Classifier(in_dim=16, num_classes=M, hidden=16)


def trainer(callbacks, epochs=2, **kwargs: Any) -> pl.Trainer:
    opts = dict(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=callbacks, enable_progress_bar=False,
                enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    return pl.Trainer(**{**opts, **kwargs})


def logits(net, loader) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net(x) for x, _ in loader]).double().numpy()


@pytest.mark.slow
def test_kill_9_mid_write_loses_no_finished_epoch_and_leaves_nothing_partial(tmp_path):
    child = subprocess.Popen([sys.executable, str(SCRIPT), "kill", str(tmp_path)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 240
    while not (tmp_path / "ready").exists():
        assert child.poll() is None and time.time() < deadline, child.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    run = tmp_path / "classim"
    assert list(run.rglob("*.tmp"))  # what the crash left
    assert [s.epoch for s in load_run(run).snapshots] == [0, 1]  # the finished epochs are whole; the third is not read
    cb = ClassSimilarityCallback(M, save_dir=run)
    _train, val, _, _ = small()
    with pytest.warns(UserWarning, match=r"removed 2 leftovers of an interrupted run in"):
        trainer([cb], epochs=1).validate(model(), val, verbose=False)
    assert not list(run.rglob("*.tmp"))
    assert all((f / "summary.json").exists() for f in run.glob("epoch=*"))
    assert len(list_snapshots(run)) == 3


@pytest.mark.slow
def test_a_full_disk_warns_once_keeps_training_and_leaves_no_partial_file(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "fsize", str(tmp_path)], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "history [0, 1, 2, 3]" in proc.stdout  # every epoch still reached the loggers
    assert proc.stderr.count("could not write the files of epoch") == 1
    assert "could not write the files of epoch 0 (OSError: " in proc.stderr
    run = tmp_path / "classim"
    assert not list(run.rglob("*.tmp")) and not list(run.glob("epoch=*"))


def test_two_callbacks_writing_into_one_folder_are_refused(tmp_path):
    a = ClassSimilarityCallback(M, save_dir=tmp_path / "x")
    b = ClassSimilarityCallback(M, scores="ranks", save_dir=tmp_path / "x")
    _, val, _, _ = small()
    with pytest.raises(ValueError, match=r"Two ClassSimilarityCallback instances would write into one folder"):
        trainer([a, b]).validate(model(), val, verbose=False)
    c = ClassSimilarityCallback(M, scores="ranks")  # the same tag_prefix under one logger: one folder too
    with pytest.raises(ValueError, match=r"give them different `tag_prefix`"):
        trainer([ClassSimilarityCallback(M), c], logger=TensorBoardLogger(str(tmp_path))).validate(model(), val)


class SlowAnalysis(ClassSimilarityCallback):
    most = 0

    def _analyse(self, *args: Any) -> Any:
        SlowAnalysis.most = max(SlowAnalysis.most, self._worker.pending)
        time.sleep(0.6)
        return super()._analyse(*args)


@pytest.mark.slow
def test_a_slow_analysis_is_queued_at_most_two_deep_and_loses_no_epoch(tmp_path):
    train, val, _, _ = small()
    cb = SlowAnalysis(M, save_dir=tmp_path / "o")
    with pytest.warns(UserWarning, match=r"the analysis is slower than the validate epochs come: the training thread"):
        trainer([cb], epochs=8, limit_train_batches=1).fit(model(), train, val)
    assert SlowAnalysis.most <= MAX_PENDING
    assert [h["epoch"] for h in cb.history] == list(range(8))
    assert len(list_snapshots(tmp_path / "o")) == 8


@pytest.mark.slow
def test_every_n_epochs_counts_validations(tmp_path):
    train, val, _, _ = small()
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "o", every_n_epochs=3)
    trainer([cb], epochs=12, limit_train_batches=1, check_val_every_n_epoch=2).fit(model(), train, val)
    # validations after epochs 1, 3, 5, 7, 9, 11: the 3rd and the 6th are analysed
    assert [h["epoch"] for h in cb.history] == [5, 11]


@pytest.mark.slow
def test_one_matrix_per_validation_dataloader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, val_a, _, _ = small()
    _, val_b, _, _ = loaders(n_per_class=30, seed=7, batch_size=64, superclasses=3, subclasses=4, dim=16)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "o")
    net = model()
    trainer([cb], epochs=1, logger=logger).validate(net, [val_a, val_b], verbose=False)
    for index, loader in enumerate((val_a, val_b)):
        (folder,) = list_snapshots(tmp_path / "o" / f"dataloader_idx_{index}")
        got = load_snapshot(folder).result.similarity
        np.testing.assert_allclose(got, np.corrcoef(logits(net, loader), rowvar=False), atol=1e-5)
        assert cb.results_of("validate", index)["scores"].similarity.shape == (M, M)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"classim/heatmap/dataloader_idx_0", "classim/heatmap/dataloader_idx_1"} <= set(acc.Tags()["images"])
    assert "classim/n_groups/dataloader_idx_1" in acc.Tags()["scalars"]
    assert sorted(h["dataloader_idx"] for h in cb.history) == [0, 1]


@pytest.mark.slow
def test_repeated_validations_and_the_test_set(tmp_path):
    _, val, _, _ = small()
    _, test, _, _ = loaders(n_per_class=30, seed=3, batch_size=64, superclasses=3, subclasses=4, dim=16)
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "o")
    net = model()
    t = trainer([cb], epochs=1)
    t.validate(net, val, verbose=False)
    t.validate(net, val, verbose=False)  # the same global step: a second folder, never an overwrite
    names = [p.name for p in list_snapshots(tmp_path / "o")]
    assert names == ["epoch=0000-step=000000", "epoch=0000-step=000000-v1"]
    t.test(net, test, verbose=False)
    (folder,) = list_snapshots(tmp_path / "o" / "test")
    np.testing.assert_allclose(load_snapshot(folder).result.similarity, np.corrcoef(logits(net, test), rowvar=False),
                               atol=1e-5)  # fmt: skip
    assert cb.history[-1]["stage"] == "test" and cb.results_of("test")["scores"].num_classes == M


def test_the_sanity_check_checks_the_capture(tmp_path):
    _, val, _, _ = small()
    trained = []

    class NoScores(DemoClassifier):
        def training_step(self, batch, batch_idx):
            trained.append(batch_idx)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            return None

    cb = ClassSimilarityCallback(M, save_dir=tmp_path)
    with pytest.raises(ValueError, match=r"found no scores: `validation_step` returned NoneType"):
        trainer([cb], num_sanity_val_steps=1).fit(NoScores(in_dim=16, num_classes=M, hidden=16), val, val)
    assert trained == []  # it failed in the sanity check, before the first training step
    ok = ClassSimilarityCallback(M, save_dir=tmp_path / "ok")
    trainer([ok], epochs=1, num_sanity_val_steps=2).fit(model(), val, val)
    assert [h["epoch"] for h in ok.history] == [0]  # the sanity batches were not accumulated


DDP_SCRIPT = Path(__file__).with_name("ddp_validate_script.py")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["padding", "unrepeated", "one_rank_empty"])
def test_ddp_samplers(tmp_path, sampler):
    """31 samples on 2 processes: Lightning's sampler repeats one (warned); an unrepeated sampler, and a rank with no
    sample at all, give numpy's matrix of the 31."""
    proc = subprocess.run([sys.executable, str(DDP_SCRIPT), str(tmp_path), "2", "scores", sampler], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_snapshot(list_snapshots(tmp_path / "classim")[0]).result.similarity
    reference = np.load(tmp_path / "logits.npy")
    assert reference.shape[0] == 31
    if sampler == "padding":
        assert "repeats 1 of them and the similarity is not exactly the data's" in proc.stderr
        assert np.abs(got - np.corrcoef(reference, rowvar=False)).max() > 1e-4
    else:
        assert "repeats" not in proc.stderr
        np.testing.assert_allclose(got, np.corrcoef(reference, rowvar=False), atol=1e-5)


def test_no_warning_in_a_plain_validation(tmp_path):
    _, val, _, _ = small()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec|GPU available).*")
        trainer([ClassSimilarityCallback(M, save_dir=tmp_path)]).validate(model(), val, verbose=False)
