"""A real fit in a child process, for the fault-injection tests: ``python fault_fit_script.py MODE OUT``.

* ``kill``: the third epoch's analysis stops half-way through writing its files and waits to be killed (``kill -9``
  from the test); ``OUT/ready`` says when. A checkpoint is saved every epoch (``OUT/ckpt/last.ckpt``).
* ``resume``: the same fit resumed from ``OUT/ckpt/last.ckpt``, to its end.
* ``hold``: a fit that writes into ``OUT/classim`` slowly (``OUT/ready`` once it holds the folder), for a second
  process to try the same folder.
* ``fsize``: a file-size limit of 100 kB (``RLIMIT_FSIZE``): the epochs' files cannot be written; training goes on.
* ``pagesize``: 12 classes, a small picture and a limit of 20 kB: every file of an epoch fits but its explorer page
  (about 31 kB), which fails half-way through.
"""

import resource
import signal
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim import ClassSimilarityCallback, artifacts
from lightning_classim.callback import _epoch as epoch_module
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.render import HeatmapOptions

if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if mode == "fsize":  # 200 classes: a 160 kB matrix, over the limit
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(2000, 16, generator=g), torch.randint(0, 200, (2000,), generator=g))
        train = val = DataLoader(data, batch_size=250)
        names = [f"class{i}" for i in range(200)]
    else:
        train, val, names, _ = loaders(n_per_class=20, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)
    if mode in ("fsize", "pagesize"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        limit = 100_000 if mode == "fsize" else 20_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if mode == "kill":
        original = artifacts.write_synced

        def stalling(path: Path, data) -> None:
            original(path, data)
            if path.parent.name.startswith(".epoch=0002") and path.name == "order.npy":
                (out / "ready").write_text(path.parent.name)  # the unfinished folder, as the crash leaves it
                time.sleep(600)

        artifacts.write_synced = stalling
    if mode == "hold":
        original_snapshot = epoch_module.write_snapshot

        def slow(*args, **kwargs):
            folder = original_snapshot(*args, **kwargs)
            (out / "ready").write_text("1")
            time.sleep(1.0)
            return folder

        epoch_module.write_snapshot = slow
    pl.seed_everything(0)
    small = HeatmapOptions(max_pixels=64, max_names=0) if mode == "pagesize" else None
    callback = ClassSimilarityCallback(len(names), class_names=names, save_dir=out / "classim", heatmap=small)
    checkpoints = [ModelCheckpoint(dirpath=out / "ckpt", save_last=True)] if mode in ("kill", "resume") else []
    trainer = pl.Trainer(max_epochs=4 if mode != "hold" else 6, accelerator="cpu", logger=False,
                         callbacks=[callback, *checkpoints], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=bool(checkpoints), num_sanity_val_steps=0)  # fmt: skip
    ckpt = out / "ckpt" / "last.ckpt" if mode == "resume" else None
    trainer.fit(DemoClassifier(in_dim=16, num_classes=len(names), hidden=16), train, val, ckpt_path=ckpt)
    print("history", [h["epoch"] for h in callback.history])
