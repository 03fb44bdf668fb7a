"""``classim demo``: a small classifier on generated data with a known three-level class hierarchy.

Trains it and logs its class-similarity structure to TensorBoard, epoch by epoch.

The data set is generated (nothing is downloaded): 48 classes named ``superclass/subclass/class`` (e.g.
``vehicle/rail/tram``) in 8 superclasses of 2 subclasses (:data:`TAXONOMY`). Each class's prototype is the sum of a
superclass, a subclass and a class component (orthonormal directions, so that classes of different superclasses share
nothing by chance), and a sample is its class's prototype plus noise, so the features nest as the names do. One of
each thing the analysis finds is planted:

* a near duplicate (:data:`NEAR_DUPLICATE`): ``furniture/seat/couch`` has the prototype of ``furniture/seat/sofa``
  (two names for one thing);
* a failed group (:data:`FAILED_GROUP`): ``vehicle/road/van``, ``animal/pet/rabbit`` and
  ``instrument/string/cello`` share one more component (a feature of their own, as the paper's celebrities who
  wear glasses), so they are alike across three superclasses while each stays with its own subclass;
* a split group (:data:`SPLIT_GROUP`): the subclasses ``vehicle/rail`` and ``building/landmark`` share one more
  component (the paper's monochrome actors of both genders), a dense block off the diagonal.

The demo trains slowly (a learning rate of 1e-4, growing by a tenth each epoch, and a quarter of the training set an
epoch) so that the first epochs are blurred and the structure forms over the run; the taxonomy is passed to the
callback, so the logged ``taxonomy_ari`` (superclasses) and ``taxonomy_ari/level2`` (subclasses) show how far the
learned structure matches the known one.

:func:`hierarchical_data` and :func:`loaders` make smaller two-level data sets (for tests and examples).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "FAILED_GROUP",
    "NEAR_DUPLICATE",
    "SPLIT_GROUP",
    "TAXONOMY",
    "DemoClassifier",
    "demo_data",
    "demo_figures",
    "demo_picture",
    "hierarchical_data",
    "loaders",
    "run_cli",
    "run_demo",
]

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


#: The demo's classes: superclass -> subclass -> classes (48 in all). ``couch`` is planted as a near duplicate of
#: ``sofa``.
TAXONOMY: dict[str, dict[str, list[str]]] = {
    "vehicle": {"road": ["car", "bus", "van"], "rail": ["tram", "train", "metro"]},
    "animal": {"farm": ["cow", "sheep", "goat"], "pet": ["cat", "dog", "rabbit"]},
    "furniture": {"seat": ["sofa", "couch"], "storage": ["shelf", "wardrobe", "cabinet", "chest"]},
    "food": {"fruit": ["apple", "pear", "plum"], "baked": ["bread", "cake", "pie"]},
    "instrument": {"string": ["guitar", "violin", "cello"], "wind": ["flute", "trumpet", "oboe"]},
    "building": {"home": ["house", "flat", "cottage"], "landmark": ["tower", "castle", "church"]},
    "plant": {"tree": ["oak", "pine", "birch"], "flower": ["rose", "tulip", "daisy"]},
    "tool": {"cutting": ["saw", "axe", "knife"], "striking": ["hammer", "mallet", "sledge"]},
}
#: The planted near duplicate: the second class gets the first's prototype.
NEAR_DUPLICATE = ("furniture/seat/sofa", "furniture/seat/couch")
#: The planted failed group: three classes of three superclasses share one more component.
FAILED_GROUP = ("vehicle/road/van", "animal/pet/rabbit", "instrument/string/cello")
#: The planted split group: two subclasses of two superclasses share one more component.
SPLIT_GROUP = ("vehicle/rail", "building/landmark")


def demo_data(
    n_per_class: int = 300,
    dim: int = 128,
    seed: int = 0,
    weights: tuple[float, float, float] = (2.5, 2.0, 1.2),
    noise: float = 4.0,
    planted: float = 2.5,
) -> tuple[Tensor, Tensor, list[str], list[list[str]]]:
    """The demo's data set: :data:`TAXONOMY`'s 48 classes with nested prototypes and the planted structure.

    Args:
        n_per_class: samples per class.
        dim: number of features (at least 74: one orthonormal direction per superclass, subclass, class and plant).
        seed: seed of the directions, the noise and the shuffle.
        weights: the weights of the superclass, subclass and class components of each prototype.
        noise: standard deviation of the noise added to each sample.
        planted: the weight of the component that the :data:`FAILED_GROUP`'s classes share, and of the one that the
            :data:`SPLIT_GROUP`'s subclasses share; 0 plants neither (the near duplicate stays).

    Returns:
        ``(x, y, class_names, taxonomy)``: ``x`` is ``(n, dim)`` float32, ``y`` the class index, and ``taxonomy``
        two lists of labels (each class's superclass, then its ``superclass/subclass``), as the callback's
        ``taxonomy`` takes them.

    Example:
        >>> x, y, names, (supers, subs) = demo_data(n_per_class=2)
        >>> x.shape, len(names), names[0], supers[0], subs[0]
        (torch.Size([96, 128]), 48, 'vehicle/road/car', 'vehicle', 'vehicle/road')
    """
    n_sub = sum(len(children) for children in TAXONOMY.values())
    n_class = sum(len(c) for children in TAXONOMY.values() for c in children.values())
    needed = len(TAXONOMY) + n_sub + n_class + 2
    if dim < needed:
        raise ValueError(
            f"Expected `dim` of at least {needed} (one orthonormal direction per superclass, subclass, class and "
            f"planted group), but got {dim}. Pass `dim={needed}` or more."
        )
    g = torch.Generator().manual_seed(seed)
    directions = iter(torch.linalg.qr(torch.randn(dim, needed, generator=g))[0].T * dim**0.5)
    w_super, w_sub, w_class = weights
    names: list[str] = []
    supers: list[str] = []
    subs: list[str] = []
    protos = []
    for sup, children in TAXONOMY.items():
        centre = next(directions)
        for sub, classes in children.items():
            middle = next(directions)
            for name in classes:
                names.append(f"{sup}/{sub}/{name}")
                supers.append(sup)
                subs.append(f"{sup}/{sub}")
                protos.append(w_super * centre + w_sub * middle + w_class * next(directions))
    proto = torch.stack(protos)
    shared_failed, shared_split = next(directions), next(directions)
    for name in FAILED_GROUP:
        proto[names.index(name)] += planted * shared_failed
    for i, sub in enumerate(subs):
        if sub in SPLIT_GROUP:
            proto[i] += planted * shared_split
    proto[names.index(NEAR_DUPLICATE[1])] = proto[names.index(NEAR_DUPLICATE[0])]
    y = torch.arange(len(names)).repeat_interleave(n_per_class)
    x = proto[y] + noise * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm].float(), y[perm], names, [supers, subs]


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
    """Generate features with a two-level class hierarchy (a smaller data set than the demo's, for tests).

    Class names read ``superclass/subclass`` (e.g. ``vehicle/truck``).

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
        lr: Adam learning rate (of the first epoch).
        lr_growth: factor of the learning rate from one epoch to the next (1: constant).
    """

    def __init__(
        self, in_dim: int = 64, num_classes: int = 48, hidden: int = 128, lr: float = 3e-3, lr_growth: float = 1.0
    ) -> None:
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

    def configure_optimizers(self) -> Any:  # noqa: D102
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
        lr_growth = float(self.hparams.get("lr_growth", 1.0))
        if lr_growth == 1.0:
            return optimizer
        growth = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_growth)
        return {"optimizer": optimizer, "lr_scheduler": growth}


def loaders(
    n_per_class: int = 150, seed: int = 0, batch_size: int = 128, **data_kwargs: Any
) -> tuple[DataLoader, DataLoader, list[str], list[str]]:
    """Train and validation loaders over :func:`hierarchical_data` (80/20 split)."""
    x, y, names, parents = hierarchical_data(n_per_class=n_per_class, seed=seed, **data_kwargs)
    cut = int(0.8 * len(y))
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=256)
    return train, val, names, parents


def run_demo(out_dir: str | Path = "classim_demo", epochs: int = 12, seed: int = 2, progress: bool = True) -> Path:
    """Train the demo classifier on :func:`demo_data` with the callback, logging to TensorBoard under ``out_dir``.

    A quarter of the training set an epoch at a learning rate of 1e-4: the first epochs are blurred, and the
    levels form over the run. With the default seed (2) the last epoch's coarse level is the 8 superclasses and its
    fine level the 16 subclasses, exactly; over seeds 0 to 7, the tree cut into 8 groups is the superclasses in every
    run, and both levels are exact in 5 of the 8 (see docs/analysis.md).

    Returns:
        The folder of the per-epoch artifacts.
    """
    from pytorch_lightning.loggers import TensorBoardLogger

    from lightning_classim.callback import ClassSimilarityCallback

    pl.seed_everything(seed)
    x, y, names, taxonomy = demo_data(seed=seed)
    cut = int(0.8 * len(y))
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=128, shuffle=True)
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=256)
    model = DemoClassifier(in_dim=x.shape[1], num_classes=len(names), hidden=256, lr=1e-4, lr_growth=1.1)
    logger = TensorBoardLogger(str(out_dir), name="demo")
    callback = ClassSimilarityCallback(len(names), class_names=names, taxonomy=taxonomy)
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
        limit_train_batches=0.25,
    )
    trainer.fit(model, train, val)
    assert callback.save_dir is not None
    return callback.save_dir


def demo_figures(run_dir: str | Path) -> dict[str, Any]:
    """What a demo run shows, measured against the known taxonomy.

    The first and the last epoch's agreement with the superclasses, the last epoch's levels against the superclasses
    and subclasses (adjusted Rand index), and the pairs it lists.

    Returns:
        ``first_epoch``, ``first_taxonomy_ari``, ``last_epoch``, ``last_taxonomy_ari`` (the tree cut into as many
        groups as superclasses), ``levels`` (one dict per level, coarse to fine: ``n_groups``, ``superclass_ari``,
        ``subclass_ari``), ``pairs`` (``(kind, a, b)``), ``failed_groups`` (the names of each one's classes) and
        ``split_groups`` (the names of the classes of each one's two sets).
    """
    from lightning_classim._stats import adjusted_rand_index
    from lightning_classim.runs import load_run

    run = load_run(run_dir)
    _, _, names, (supers, subs) = demo_data(n_per_class=1)
    codes = [np.unique(np.asarray(level), return_inverse=True)[1] for level in (supers, subs)]
    first, last = run.snapshots[0], run.snapshots[-1]
    levels = [
        {"n_groups": level.n_groups, "superclass_ari": adjusted_rand_index(level.groups, codes[0]),
         "subclass_ari": adjusted_rand_index(level.groups, codes[1])}
        for level in last.result.levels
    ]  # fmt: skip
    return {
        "first_epoch": first.epoch,
        "first_taxonomy_ari": float(first.metrics.get("taxonomy_ari", float("nan"))),
        "last_epoch": last.epoch,
        "last_taxonomy_ari": float(last.metrics.get("taxonomy_ari", float("nan"))),
        "levels": levels,
        "pairs": [(p.kind, p.a, p.b) for p in last.result.pairs],
        "failed_groups": [[names[i] for i in f.members] for f in last.result.failed_groups],
        "split_groups": [tuple([names[i] for i in part] for part in g.members) for g in last.result.split_groups],
    }


def demo_picture(run_dir: str | Path, path: str | Path, size: int = 256) -> Path:
    """The structure forming, as one PNG: four epochs' heatmaps side by side.

    The first, second, fourth and last epochs, in the last epoch's order with its two levels outlined, each titled
    with the epoch and its superclass ARI.
    """
    from lightning_classim.render import grid_image, render_heatmap, save_png
    from lightning_classim.runs import load_run

    run = load_run(run_dir)
    final = run.snapshots[-1].result
    coarse, fine = final.outlined_cuts()
    picks = sorted({0, min(1, len(run.snapshots) - 1), min(3, len(run.snapshots) - 1), len(run.snapshots) - 1})
    shots = [run.snapshots[i] for i in picks]
    images = [render_heatmap(s.result.similarity, final.order, fine, coarse_groups=coarse, max_pixels=size,
                             min_pixels=size) for s in shots]  # fmt: skip
    labels = [f"epoch {s.epoch}: superclass ARI {s.metrics.get('taxonomy_ari', float('nan')):.2f}" for s in shots]
    out = Path(path)
    save_png(grid_image(images, labels, cols=len(images)), out)
    return out


def run_cli(out: str | Path, epochs: int, seed: int, progress: bool = True, picture: str | None = None) -> int:
    """Run ``classim demo``: train, say what the run shows, and how to look at it."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    artifacts = run_demo(out, epochs=epochs, seed=seed, progress=progress)
    last = sorted(p for p in artifacts.iterdir() if p.is_dir() and p.name.startswith("epoch="))[-1]
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Per-epoch files: {artifacts}")
    figures = demo_figures(artifacts)
    print(f"Epoch {figures['first_epoch']}: superclass ARI {figures['first_taxonomy_ari']:.2f} (blurred). "
          f"Epoch {figures['last_epoch']}: {figures['last_taxonomy_ari']:.2f}. Levels of the last epoch:")  # fmt: skip
    for level in figures["levels"]:
        print(f"    {level['n_groups']} groups: superclass ARI {level['superclass_ari']:.2f}, "
              f"subclass ARI {level['subclass_ari']:.2f}")  # fmt: skip
    for kind, a, b in figures["pairs"]:
        print(f"    pair worth a look ({kind.replace('_', ' ')}): {a} {b}".rstrip())
    for members in figures["failed_groups"]:
        print(f"    failed group (alike, scattered over groups): {', '.join(members)}")
    for one, other in figures["split_groups"]:
        print(f"    split group (a dense block off the diagonal): {', '.join(one)} | {', '.join(other)}")
    if picture:
        print(f"The structure forming, four epochs in one picture: {demo_picture(artifacts, picture)}")
    print(f"Last heatmap: {last / 'heatmap.png'}")
    print("View the structure forming, epoch by epoch, with:\n")
    print(f"    tensorboard --logdir {out} --samples_per_plugin images=1000\n")
    print(
        "(TensorBoard keeps only 10 images per tag by default, too few to follow the evolution; images=1000 keeps "
        "up to 1000 epochs. On TensorBoard 2.21, images=0 shows no image at all.)"
    )
    print(f"A report of the run: classim report {artifacts}")
    return 0
