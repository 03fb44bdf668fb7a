"""Validate a fixed model with the callback on N CPU processes (Lightning's DDP launcher re-runs this script).

``python ddp_validate_script.py OUT N SOURCES [SAMPLER]``: SAMPLER ``padding`` (31 samples through Lightning's
DistributedSampler, which repeats one), ``unrepeated`` (31 through ``UnrepeatedDistributedSampler``) or
``one_rank_empty`` (31, all on rank 0); without it, 144 samples (divisible by 2: nothing is padded).
"""

import os
import sys

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, IterableDataset

from lightning_classim import ClassSimilarity, ClassSimilarityCallback, MetricSource
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.sources import ClassFeatureSimilarity

CUSTOM = {  # views of one's own, given as metric objects
    "probs": lambda: MetricSource("probs", ClassSimilarity(12, scores="probs")),
    "body_means": lambda: MetricSource(
        "body_means", ClassFeatureSimilarity(12, 32), inputs=("features:body", "target")
    ),
}


class AllOnRankZero(IterableDataset):
    """Every sample on rank 0, none on the others (Lightning refuses a loader of length 0, not an empty iterable)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __iter__(self):
        return iter(self.dataset if torch.distributed.get_rank() == 0 else [])


class WithLoader(DemoClassifier):
    """Builds its validation loader after the processes started, so that a sampler can ask for its rank."""

    def __init__(self, dataset, sampler: str) -> None:
        super().__init__(in_dim=16, num_classes=12, hidden=32)
        self.dataset, self.sampler = dataset, sampler

    def validation_step(self, batch, batch_idx):  # no self.log(sync_dist=True): a rank may see no batch
        return self(batch[0])

    def val_dataloader(self):
        if self.sampler == "unrepeated":
            return DataLoader(
                self.dataset, batch_size=8, sampler=UnrepeatedDistributedSampler(self.dataset, shuffle=False)
            )
        return DataLoader(AllOnRankZero(self.dataset), batch_size=8)


if __name__ == "__main__":
    out, devices = sys.argv[1], int(sys.argv[2])
    sources = [CUSTOM[s]() if s in CUSTOM else s for s in (sys.argv[3].split(",") if len(sys.argv) > 3 else ["scores"])]
    sampler = sys.argv[4] if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    pl.seed_everything(0)
    # 12 classes x 60 samples -> 144 validation samples: divisible by 2, so the distributed sampler pads nothing
    _, val, names, _ = loaders(n_per_class=60, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)
    net = DemoClassifier(in_dim=16, num_classes=12, hidden=32)
    loader = val
    if sampler is not None:
        subset = torch.utils.data.Subset(val.dataset, range(31))
        if sampler == "padding":
            loader = DataLoader(subset, batch_size=8)
        else:
            pl.seed_everything(0)
            net = WithLoader(subset, sampler)
            loader = None
        if os.environ.get("LOCAL_RANK", "0") == "0":  # the launcher re-runs this script for the other ranks
            with torch.no_grad():
                np.save(f"{out}/logits.npy", net(torch.stack([x for x, _ in subset])).double().numpy())
    cb = ClassSimilarityCallback(12, class_names=names, save_dir=f"{out}/classim", sources=sources)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=sampler in (None, "padding"),
    )
    trainer.validate(net, loader, verbose=False)
    if torch.distributed.is_initialized():
        # Lightning destroys the process group at exit from 2.3 on (Lightning-AI/pytorch-lightning#19931); under 2.1
        # it is left to the interpreter's exit, where gloo's threads once aborted a rank (SIGABRT, "terminate called
        # without an active exception") after everything was written
        torch.distributed.destroy_process_group()
