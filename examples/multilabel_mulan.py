"""Multi-label: a small MLP trained with BCE on a real Mulan data set, the callback with `multilabel=True`,
the score-based matrix next to the label co-occurrence matrix of the same validation set.

The data is read at run time from a Mulan folder (this project's ../shared/data/mulan/<name>; nothing is
downloaded or copied). Enron (53 labels) has an explicit label hierarchy, A.* / B.* / C.* / D.*, passed as the
taxonomy; Delicious (983 tags) and Bibtex (159 tags) have none.

Run: python examples/multilabel_mulan.py [--data ../shared/data/mulan/delicious] [--epochs 15]
Writes side_by_side.png (scores | co-occurrence, both in the score-based order) next to the TensorBoard logs.
"""

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim import ClassSimilarityCallback, CooccurrenceSource, StructureOptions
from lightning_classim.datasets import read_mulan

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mulan" / "enron"


class MultiLabelMLP(pl.LightningModule):
    def __init__(self, in_dim: int, num_labels: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, num_labels))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.binary_cross_entropy_with_logits(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.binary_cross_entropy_with_logits(logits, y), prog_bar=True)
        return {"logits": logits}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, weight_decay=1e-5)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT, help="a Mulan data set folder")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default="lightning_logs_multilabel")
    args = parser.parse_args(argv)
    pl.seed_everything(0)
    train, test = read_mulan(args.data, "train"), read_mulan(args.data, "test")
    names = list(train.label_names)
    x_mean, x_std = train.x.mean(0), train.x.std(0) + 1e-6

    def tensors(d):
        return TensorDataset(torch.from_numpy((d.x - x_mean) / x_std), torch.from_numpy(d.y.astype("float32")))

    taxonomy = [n.split(".")[0] for n in names] if all("." in n for n in names) else None
    # co-occurrence is sparse (most label pairs never occur together: distance exactly 1), so complete linkage ties;
    # average linkage groups it
    sources = ["scores", CooccurrenceSource(StructureOptions(method="average"))]
    callback = ClassSimilarityCallback(
        len(names), class_names=names, multilabel=True, taxonomy=taxonomy, sources=sources
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=TensorBoardLogger(args.out, name=args.data.name),
        callbacks=[callback], enable_progress_bar=True, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(
        MultiLabelMLP(train.x.shape[1], len(names)),
        DataLoader(tensors(train), batch_size=128, shuffle=True),
        DataLoader(tensors(test), batch_size=512),
    )
    last = callback.last_result
    assert last is not None and callback.save_dir is not None
    print(f"\n{args.data.name}: {len(names)} labels, {last.n_groups} groups; files in {callback.save_dir}")
    for group in sorted(last.summary, key=lambda g: -g.cohesion if g.size > 2 else 1)[:10]:
        members = ", ".join(n.removeprefix("TAG_") for n in group.names[:12])
        print(f"  group {group.group} (cohesion {group.cohesion:.2f}, {group.size} labels): {members}")
    scalars = callback.history[-1]
    print(f"co-occurrence (average linkage): {scalars['cooccurrence/n_groups']:.0f} groups; agreement with the "
          f"scores: matrix corr {scalars['agreement/cooccurrence/matrix_corr']:.3f}, group ARI "
          f"{scalars['agreement/cooccurrence/group_ari']:.3f}")  # fmt: skip
    side_by_side(callback.save_dir, Path(args.out) / args.data.name / "side_by_side.png")
    return callback.save_dir


def side_by_side(save_dir: Path, out: Path) -> Path:
    """The last epoch's score-based matrix and the co-occurrence IoU, both in the score-based order."""
    import numpy as np

    from lightning_classim import render_heatmap, save_png
    from lightning_classim.artifacts import list_snapshots, load_snapshot

    scores = load_snapshot(list_snapshots(save_dir)[-1]).result
    cooc = load_snapshot(list_snapshots(save_dir / "sources" / "cooccurrence")[-1]).result
    off = cooc.similarity[~np.eye(len(cooc.order), dtype=bool)]
    left = render_heatmap(scores.similarity, scores.order, scores.groups, max_pixels=600)
    right = render_heatmap(cooc.similarity, scores.order, scores.groups, max_pixels=600, cmap="magma", vmin=0,
                           vmax=max(float(np.quantile(off, 0.99)), 1e-6))  # fmt: skip
    gap = np.full((left.shape[0], 12, 3), 255, dtype=np.uint8)
    path = save_png(np.concatenate([left, gap, right], axis=1), out)
    print(f"scores | co-occurrence (same order): {path}")
    return path


if __name__ == "__main__":
    main()
