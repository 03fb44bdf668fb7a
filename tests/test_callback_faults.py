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


def wait_ready(child: subprocess.Popen, out: Path) -> str:
    deadline = time.time() + 240
    while not (out / "ready").exists():
        assert child.poll() is None and time.time() < deadline, child.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    time.sleep(0.05)
    return (out / "ready").read_text()


@pytest.mark.slow
def test_kill_9_mid_write_loses_no_finished_epoch_and_the_resumed_run_cleans_only_its_leftover(tmp_path):
    child = subprocess.Popen([sys.executable, str(SCRIPT), "kill", str(tmp_path)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    unfinished = wait_ready(child, tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    run = tmp_path / "classim"
    # what the crash left: the third epoch's folder under its marked name, with the killed process's id
    assert unfinished == f".epoch=0002-step=000009.classim-{child.pid}.partial"
    assert (run / unfinished / "order.npy").is_file() and not (run / unfinished / "summary.json").exists()
    assert [s.epoch for s in load_run(run).snapshots] == [0, 1]  # the finished epochs are whole; the third is not read
    (run / "notes.tmp").write_text("mine")  # a user's files beside the run: never touched
    (run / "epoch=0009-step=000001").mkdir()
    (run / "epoch=0009-step=000001" / "my_results.csv").write_text("a,b\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "resume", str(tmp_path)], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"removed 1 leftovers of an interrupted run of this package in {run}: {unfinished}." in proc.stderr
    assert not (run / unfinished).exists()
    assert (run / "notes.tmp").read_text() == "mine"
    assert (run / "epoch=0009-step=000001" / "my_results.csv").read_text() == "a,b\n"
    loaded = load_run(run)
    assert [s.epoch for s in loaded.snapshots] == [0, 1, 2, 3]  # the resumed run continues the same run
    assert {s.extra["run_id"] for s in loaded.snapshots} == {loaded.info["run_id"]}
    assert all((f / "explorer.html").is_file() for f in list_snapshots(run))


@pytest.mark.slow
def test_a_full_disk_warns_at_every_epoch_keeps_training_and_leaves_no_partial_file(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "fsize", str(tmp_path)], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "history [0, 1, 2, 3]" in proc.stdout  # every epoch still reached the loggers
    for epoch in range(4):
        assert f"could not write the files of epoch {epoch} (OSError: " in proc.stderr
    assert "no partial file or folder was left on disk" in proc.stderr
    run = tmp_path / "classim"
    assert sorted(p.name for p in run.iterdir()) == [".classim.lock", "run.json"]  # nothing of any epoch


@pytest.mark.slow
def test_a_file_size_limit_met_while_the_page_is_written_leaves_nothing_of_the_epoch(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "pagesize", str(tmp_path)], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "history [0, 1, 2, 3]" in proc.stdout
    for epoch in range(4):
        assert f"could not write the files of epoch {epoch} (OSError: [Errno 27] File too large)" in proc.stderr
    run = tmp_path / "classim"
    assert sorted(p.name for p in run.iterdir()) == [".classim.lock", "run.json"]  # no half page, no half epoch


@pytest.mark.slow
def test_a_second_process_on_the_same_save_dir_is_refused_and_changes_nothing(tmp_path):
    child = subprocess.Popen([sys.executable, str(SCRIPT), "hold", str(tmp_path)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_ready(child, tmp_path)
    run = tmp_path / "classim"
    before = (run / "run.json").read_bytes()
    _, val, _, _ = small()
    cb = ClassSimilarityCallback(M, save_dir=run)
    with pytest.raises(ValueError, match=rf"{run} is being written by another run \(process {child.pid} on "):
        trainer([cb]).validate(model(), val, verbose=False)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    assert "history [0, 1, 2, 3, 4, 5]" in out
    assert (run / "run.json").read_bytes() == before
    loaded = load_run(run)
    assert [s.epoch for s in loaded.snapshots] == [0, 1, 2, 3, 4, 5]
    assert {s.extra["run_id"] for s in loaded.snapshots} == {loaded.info["run_id"]}
    # once it has ended, another run is still refused: the folder holds that run's epochs
    with pytest.raises(ValueError, match=r"already holds the epochs of another run \([0-9a-f]{32}\); this run's"):
        trainer([ClassSimilarityCallback(M, save_dir=run)]).validate(model(), val, verbose=False)
    assert [s.epoch for s in load_run(run).snapshots] == [0, 1, 2, 3, 4, 5]


def test_user_files_beside_and_inside_the_run_folder_are_never_touched(tmp_path):
    import os as _os

    shared = tmp_path / "shared"
    mine = {
        "notes.tmp": "a", "deep/er/cache.tmp": "b", "epoch=0001-step=000005/my_results.csv": "c",
        "epoch=0002-step=000001.tmp": "d", ".x.classim-1.tmp": "e",  # pid 1 runs: a live process's file is kept
        "sources/mine/.y.tmp": "f",
    }  # fmt: skip
    for name, text in mine.items():
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).write_text(text)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = shared / f".epoch=0000-step=000000.classim-{int(dead.stdout)}.partial"
    leftover.mkdir()
    _, val, _, _ = small()
    cb = ClassSimilarityCallback(M, save_dir=shared)
    with pytest.warns(UserWarning, match=r"removed 1 leftovers of an interrupted run of this package"):
        trainer([cb]).validate(model(), val, verbose=False)
    assert not leftover.exists()
    for name, text in mine.items():
        assert (shared / name).read_text() == text, name
    assert len(list_snapshots(shared)) == 1 and _os.path.isfile(shared / "run.json")


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_unwritable_save_dir_fails_at_setup_before_the_first_step(tmp_path, where):
    (tmp_path / "file").write_text("x")
    save_dir = tmp_path / "file" / "classim" if where == "under a file" else Path("/proc/classim_test")
    trained = []

    class Counting(Classifier):
        def training_step(self, batch, batch_idx):
            trained.append(batch_idx)
            return super().training_step(batch, batch_idx)

    pl.seed_everything(0)
    train, val, _, _ = small()
    cb = ClassSimilarityCallback(M, save_dir=save_dir)
    with pytest.raises(ValueError, match=rf"Expected argument `save_dir` to be a folder this process can write, but "
                                         rf"{save_dir} cannot be created or written .*Pass a writable"):  # fmt: skip
        trainer([cb]).fit(Counting(in_dim=16, num_classes=M, hidden=16), train, val)
    assert trained == []


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


def test_an_explorer_page_that_cannot_be_built_loses_no_epoch(tmp_path, monkeypatch):
    import lightning_classim.explorer as explorer

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("no page today")

    monkeypatch.setattr(explorer, "explorer_html", broken)
    _, val, _, _ = small()
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "o")
    said = r"could not build the explorer page of epoch 0 \(RuntimeError: no page today\); the epoch's other files"
    with pytest.warns(UserWarning, match=said):
        trainer([cb]).validate(model(), val, verbose=False)
    (folder,) = list_snapshots(tmp_path / "o")
    assert (folder / "summary.json").is_file() and not (folder / "explorer.html").exists()


def test_a_write_failure_while_the_page_is_written_leaves_nothing_of_the_epoch(tmp_path, monkeypatch):
    import errno

    from lightning_classim import artifacts

    original = artifacts.write_synced

    def full_at_the_page(path: Path, data: Any) -> None:
        if path.name == "explorer.html":  # the disk fills while the page is written, after the epoch's other files
            with open(path, "wb") as fh:
                fh.write(b"<!DOCTYPE html><html><head>")  # half a page, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, data)

    monkeypatch.setattr(artifacts, "write_synced", full_at_the_page)
    _, val, _, _ = small()
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "o")
    with pytest.warns(UserWarning, match=r"could not write the files of epoch 0 \(OSError: \[Errno 28\] No space left "
                                         r"on device\); no partial file or folder was left on disk"):  # fmt: skip
        trainer([cb]).validate(model(), val, verbose=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".classim.lock", "run.json"]
    assert [h["epoch"] for h in cb.history] == [0]  # the loggers still got the epoch


def test_a_run_json_that_cannot_be_written_fails_before_the_first_step(tmp_path):
    (tmp_path / "o" / "run.json").mkdir(parents=True)  # a folder where the run's settings go: not ours, not touched
    _, val, _, _ = small()
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "o")
    with pytest.raises(ValueError, match=r"Expected argument `save_dir` to be a folder this process can write, but "
                                         r"writing .*run.json failed \(IsADirectoryError"):  # fmt: skip
        trainer([cb]).validate(model(), val, verbose=False)
    assert (tmp_path / "o" / "run.json").is_dir() and not list_snapshots(tmp_path / "o")
