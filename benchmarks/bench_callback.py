"""Cost of the callback on a validation epoch, and the time the training thread waits at epoch end.

Run: ``python benchmarks/bench_callback.py`` (``--classes 1000 --samples 20000``).

A model of about 25 MFLOP per sample (an MLP 1024 -> 2048 -> 2048 -> 2048 -> m) is validated with ``Trainer.validate``
on N samples, with and without :class:`ClassSimilarityCallback`, alternating, best of ``--repeats``. The
validation loop is timed from ``on_validation_epoch_start`` to the end of ``on_validation_epoch_end`` (so it
includes the callback's per-batch updates and its epoch-end ``compute()``), not the analysis that runs on the
worker thread. The streaming update costs ``2 m^2`` FLOP per sample (2 MFLOP at m = 1000), so its share of a
validation epoch is about that over the model's own cost per sample.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim import ClassSimilarityCallback


class Net(pl.LightningModule):
    def __init__(self, m: int, width: int = 2048, in_dim: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, m),
        )  # fmt: skip
        self.flops = 2 * (in_dim * width + 2 * width * width + width * m)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0])


class Timer(pl.Callback):
    def __init__(self, start: bool) -> None:
        self.start = start
        self.t0 = 0.0
        self.elapsed: list[float] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start:
            Timer.t0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.start:
            self.elapsed.append(time.perf_counter() - Timer.t0)


def run(model: Net, loader: DataLoader, callback: ClassSimilarityCallback | None, save_dir: str) -> float:
    end = Timer(start=False)
    callbacks: list[pl.Callback] = [Timer(start=True)] + ([callback] if callback else []) + [end]
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=save_dir,
    )
    trainer.validate(model, loader, verbose=False)
    return end.elapsed[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="folder of the runs (default: a new temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pl.seed_everything(0)
    m = args.classes
    model = Net(m)
    model.eval()
    x = torch.randn(args.samples, 1024)
    loader = DataLoader(TensorDataset(x), batch_size=args.batch)
    best: dict[str, float] = {}
    waits: dict[str, list[float]] = {"async": [], "sync": []}
    analysis: list[float] = []
    args.out = args.out or tempfile.mkdtemp(prefix="classim_bench_callback_")
    run(model, loader, None, args.out)  # warm-up
    for repeat in range(args.repeats):
        best["without"] = min(best.get("without", 1e9), run(model, loader, None, args.out))
        for mode in ("async", "sync"):  # one folder per run: a run folder is never shared
            cb = ClassSimilarityCallback(m, save_dir=f"{args.out}/{mode}-{repeat}", async_analysis=mode == "async")
            best[mode] = min(best.get(mode, 1e9), run(model, loader, cb, args.out))
            waits[mode].append(min(cb.epoch_end_wait_s))
            analysis.append(min(cb.analysis_s))
    t_an = min(analysis)
    print(
        f"m = {m}, N = {args.samples}, batch {args.batch}, model {model.flops / 1e6:.0f} MFLOP/sample, "
        f"update {2 * m * m / 1e6:.0f} MFLOP/sample, torch {torch.__version__}, 2 threads"
    )
    print("| validation epoch | time | vs without | epoch-end wait on the training thread | wait / analysis |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| without callback | {best['without']:.2f} s | 1.00x | | |")
    for mode in ("async", "sync"):
        wait = min(waits[mode])
        print(
            f"| with callback ({mode} analysis) | {best[mode]:.2f} s | {best[mode] / best['without']:.3f}x | "
            f"{wait * 1e3:.0f} ms | {wait / t_an:.1%} |"
        )
    print(f"\nanalysis + render + write of one epoch (worker thread): {t_an * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
