"""A plain LightningModule with the callback: nothing in the model changes but `validation_step` returning logits.

Run: python examples/plain_lightning.py   (then: tensorboard --logdir lightning_logs --samples_per_plugin images=1000)
"""

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim import ClassSimilarityCallback
from lightning_classim.demo import hierarchical_data


class Classifier(pl.LightningModule):
    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        return logits  # all the callback needs (or a dict {"logits": logits, ...})

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main(out: str = "lightning_logs", epochs: int = 5) -> None:
    x, y, names, parents = hierarchical_data(n_per_class=200, superclasses=4, subclasses=5)
    cut = int(0.8 * len(y))
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=128, shuffle=True)
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=256)
    callback = ClassSimilarityCallback(num_classes=len(names), class_names=names, taxonomy=parents)
    trainer = pl.Trainer(max_epochs=epochs, logger=TensorBoardLogger(out), callbacks=[callback], accelerator="cpu")
    trainer.fit(Classifier(x.shape[1], len(names)), train, val)
    print(f"per-epoch files in {callback.save_dir}; last metrics: {callback.history[-1]}")


if __name__ == "__main__":
    main()
