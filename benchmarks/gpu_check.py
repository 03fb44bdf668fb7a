"""The callback on a CUDA device, end to end: a real ``Trainer.fit`` with the dense metric and with the head route.

Run on a GPU machine: ``python benchmarks/gpu_check.py`` (about a minute). It trains the demo's classifier on
``accelerator="gpu"`` for 2 epochs with two callbacks, the dense matrix (``ClassSimilarityCallback``) and the head
route (``head="fc"``), then checks each last snapshot on disk against numpy's float64 ``corrcoef`` of the model's
validation logits, and prints the largest differences and the time of the fit. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim.callback import ClassSimilarityCallback
from lightning_classim.demo import DemoClassifier, demo_data
from lightning_classim.runs import load_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="gpu", help="'cpu' to try the script where there is no GPU")
    accelerator = parser.parse_args().accelerator
    if accelerator == "gpu" and not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    pl.seed_everything(0, verbose=False)
    x, y, names, taxonomy = demo_data(n_per_class=200)
    cut = int(0.8 * len(y))
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=128, shuffle=True)
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=256)
    model = DemoClassifier(in_dim=x.shape[1], num_classes=len(names), hidden=256, lr=1e-3)
    with tempfile.TemporaryDirectory() as out:
        dense = ClassSimilarityCallback(
            len(names), class_names=names, taxonomy=taxonomy, save_dir=f"{out}/dense", tag_prefix="dense"
        )
        head = ClassSimilarityCallback(
            len(names), class_names=names, head="fc", save_dir=f"{out}/head", tag_prefix="head"
        )
        trainer = pl.Trainer(max_epochs=2, accelerator=accelerator, devices=1, logger=False, callbacks=[dense, head],
                             enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)  # fmt: skip
        start = time.perf_counter()
        trainer.fit(model, train, val)
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(b.to(model.device)).cpu() for b, _ in val]).double().numpy()
        reference = np.corrcoef(logits, rowvar=False)
        failed = False
        for name in ("dense", "head"):
            snapshot = load_run(Path(out) / name).snapshots[-1]
            result = snapshot.result
            sim = result.matrix(np.arange(len(names))) if result.embedded else result.similarity
            error = float(np.abs(np.asarray(sim, dtype=np.float64) - reference).max())
            ok = error < 1e-4 and snapshot.epoch == 1
            failed |= not ok
            device = torch.cuda.get_device_name() if accelerator == "gpu" else "cpu"
            print(json.dumps({"route": name, "device": device, "epoch": snapshot.epoch,
                              "max_abs_error_vs_numpy": error, "n_groups": result.n_groups, "ok": ok}))  # fmt: skip
        print(json.dumps({"fit_seconds": round(seconds, 2), "torch": torch.__version__}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
