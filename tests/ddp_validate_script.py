"""Validate a fixed model with the callback on N CPU processes (Lightning's DDP launcher re-runs this script)."""

import sys

import pytorch_lightning as pl
import torch

from lightning_classim import ClassSimilarity, ClassSimilarityCallback, MetricSource
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.sources import ClassFeatureSimilarity

CUSTOM = {  # views of one's own, given as metric objects
    "probs": lambda: MetricSource("probs", ClassSimilarity(12, scores="probs")),
    "body_means": lambda: MetricSource(
        "body_means", ClassFeatureSimilarity(12, 32), inputs=("features:body", "target")
    ),
}

if __name__ == "__main__":
    out, devices = sys.argv[1], int(sys.argv[2])
    sources = [CUSTOM[s]() if s in CUSTOM else s for s in (sys.argv[3].split(",") if len(sys.argv) > 3 else ["scores"])]
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    # 12 classes x 60 samples -> 144 validation samples: divisible by 2, so the distributed sampler pads nothing
    _, val, names, _ = loaders(n_per_class=60, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)
    net = DemoClassifier(in_dim=16, num_classes=12, hidden=32)
    cb = ClassSimilarityCallback(12, class_names=names, save_dir=f"{out}/classim", sources=sources)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(net, val, verbose=False)
