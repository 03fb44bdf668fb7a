"""``classim demo``: a small classifier on generated data with a known class hierarchy.

Trains it and logs its class-similarity structure to TensorBoard, epoch by epoch.

The data set is generated (nothing is downloaded): ``superclasses x subclasses`` classes whose prototypes sit
around superclass centres, so the model should learn a two-level hierarchy. Class names read
``superclass/subclass`` (e.g. ``vehicle/truck``), and the taxonomy is passed to the callback, so the logged
``taxonomy_ari`` and ``taxonomy_tree_corr`` show how far the learned structure matches the known one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DemoClassifier", "hierarchical_data", "loaders", "run_cli", "run_demo"]

SUPERCLASSES: dict[str, list[str]] = {
    "vehicle": ["car", "truck", "bus", "bicycle", "motorbike", "tram"],
    "animal": ["cat", "dog", "horse", "cow", "sheep", "goat"],
    "furniture": ["chair", "table", "sofa", "bed", "shelf", "desk"],
    "food": ["apple", "pear", "bread", "cheese", "pizza", "cake"],
    "instrument": ["guitar", "violin", "piano", "drum", "flute", "trumpet"],
    "building": ["house", "tower", "church", "castle", "barn", "bridge"],
    "plant": ["tree", "grass", "flower", "cactus", "fern", "moss"],
    "tool": ["hammer", "saw", "drill", "wrench", "spade", "axe"],
}


def hierarchical_data(
    n_per_class: int = 150,
    dim: int = 64,
    superclasses: int = 8,
    subclasses: int = 6,
    seed: int = 0,
    spread_super: float = 1.6,
    spread_sub: float = 1.1,
    noise: float = 1.0,
) -> tuple[Tensor, Tensor, list[str], list[str]]:
    """Generate features with a two-level class hierarchy.

    Returns:
        ``(x, y, class_names, superclass_of_each_class)``; ``x`` is ``(n, dim)`` float32 and ``y`` the class index.
    """
    if not 1 <= superclasses <= len(SUPERCLASSES) or not 1 <= subclasses <= 6:
        raise ValueError(
            f"Expected 1..{len(SUPERCLASSES)} superclasses and 1..6 subclasses, but got {superclasses} and "
            f"{subclasses}."
        )
    g = torch.Generator().manual_seed(seed)
    supers = list(SUPERCLASSES)[:superclasses]
    names, parents = [], []
    protos = []
    for s in supers:
        centre = spread_super * torch.randn(dim, generator=g)
        for sub in SUPERCLASSES[s][:subclasses]:
            names.append(f"{s}/{sub}")
            parents.append(s)
            protos.append(centre + spread_sub * torch.randn(dim, generator=g))
    proto = torch.stack(protos)
    m = len(names)
    y = torch.arange(m).repeat_interleave(n_per_class)
    x = proto[y] + noise * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm].float(), y[perm], names, parents


class DemoClassifier(pl.LightningModule):
    """A small MLP classifier whose ``validation_step`` returns its logits (all the callback needs).

    Args:
        in_dim: input features.
        num_classes: output classes.
        hidden: hidden width.
        lr: Adam learning rate.
    """

    def __init__(self, in_dim: int = 64, num_classes: int = 48, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.fc(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:  # noqa: D102
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:  # noqa: D102
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, sync_dist=True)
        return logits

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def loaders(
    n_per_class: int = 150, seed: int = 0, batch_size: int = 128, **data_kwargs: Any
) -> tuple[DataLoader, DataLoader, list[str], list[str]]:
    """Train and validation loaders over :func:`hierarchical_data` (80/20 split)."""
    x, y, names, parents = hierarchical_data(n_per_class=n_per_class, seed=seed, **data_kwargs)
    cut = int(0.8 * len(y))
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=256)
    return train, val, names, parents


def run_demo(out_dir: str | Path = "classim_demo", epochs: int = 12, seed: int = 0, progress: bool = True) -> Path:
    """Train the demo classifier with the callback, logging to TensorBoard under ``out_dir``.

    Returns:
        The folder of the per-epoch artifacts.
    """
    from pytorch_lightning.loggers import TensorBoardLogger

    from lightning_classim.callback import ClassSimilarityCallback

    pl.seed_everything(seed)
    train, val, names, parents = loaders(n_per_class=700, seed=seed, noise=3.0, dim=128)
    model = DemoClassifier(in_dim=128, num_classes=len(names), hidden=512, lr=1e-3)
    logger = TensorBoardLogger(str(out_dir), name="demo")
    callback = ClassSimilarityCallback(len(names), class_names=names, taxonomy=parents)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)
    assert callback.save_dir is not None
    return callback.save_dir


def run_cli(out: str | Path, epochs: int, seed: int, progress: bool = True) -> int:
    """Run ``classim demo``: train, then print where everything is and how to look at it."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    artifacts = run_demo(out, epochs=epochs, seed=seed, progress=progress)
    last = sorted(p for p in artifacts.iterdir() if p.is_dir())[-1]
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Per-epoch files: {artifacts}")
    print(f"Last heatmap: {last / 'heatmap.png'}")
    print("View the structure forming, epoch by epoch, with:\n")
    print(f"    tensorboard --logdir {out} --samples_per_plugin images=1000\n")
    print(
        "(TensorBoard keeps only 10 images per tag by default, too few to follow the evolution; images=1000 keeps "
        "up to 1000 epochs. On TensorBoard 2.21, images=0 shows no image at all.)"
    )
    print(f"A report of the run: classim report {artifacts}")
    return 0
