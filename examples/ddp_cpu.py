"""The callback under DDP on CPU: two processes, gloo backend. Every rank streams its shard; the merged matrix is
exact (the metric's states merge by a plain sum); rank 0 analyses and logs.

Run: python examples/ddp_cpu.py   (Lightning launches the second process by re-running this script)
"""

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_classim import ClassSimilarityCallback
from lightning_classim.demo import DemoClassifier, loaders


def main(out: str = "lightning_logs_ddp", epochs: int = 3) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    train, val, names, parents = loaders(n_per_class=100, superclasses=4, subclasses=5, dim=32)
    callback = ClassSimilarityCallback(len(names), class_names=names, taxonomy=parents)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=TensorBoardLogger(out),
        callbacks=[callback],
        enable_progress_bar=False,
    )
    trainer.fit(DemoClassifier(in_dim=32, num_classes=len(names), hidden=64), train, val)
    if trainer.is_global_zero:
        print(f"per-epoch files in {callback.save_dir}; last metrics: {callback.history[-1]}")
    if torch.distributed.is_initialized():  # Lightning < 2.3 leaves this to the interpreter's exit
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
