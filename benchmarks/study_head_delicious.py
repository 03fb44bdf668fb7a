"""Delicious (983 tags) through the head route: the same matrix and the same structure as the dense route.

Run: ``python benchmarks/study_head_delicious.py [--data ../shared/data/mulan/delicious]`` (about 1 min on 2 CPU
cores; skips when the data is absent).

A small MLP (500 features -> 256 hidden -> 983 logits, BCE, 15 epochs) is trained on Delicious's training split; on
its test split (3,185 samples):

* the dense route: :class:`ClassSimilarity` over the 983 logits (the ``983 x 983`` state);
* the head route: :class:`HeadSimilarity` over the 256 features the last layer reads (a ``256 x 256`` state), and
  ``compute(weight)`` with that layer's weight.

It reports how far the two matrices are apart, then the structure: the dense analysis of the matrix against the
route without the matrix (``analyze(embeddings)``, forced here below its 4,096-class switch), both with average
linkage: the adjusted Rand index of their cuts at the same numbers of groups, the 16 nearest tags, and a figure
(``docs/delicious_head_route.png``: the dense matrix in the dense order and in the head route's order).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_classim import ClassSimilarity, HeadSimilarity, analyze
from lightning_classim._stats import adjusted_rand_index
from lightning_classim.datasets import read_mulan
from lightning_classim.render import render_heatmap, save_png
from lightning_classim.structure import _embedded
from lightning_classim.structure._tree import cut_maxclust

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mulan" / "delicious"
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "delicious_head_route.png"


def train(x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0]).split(128):
            loss = nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    if not (args.data / f"{args.data.name}-train.arff").exists():
        print(f"No data at {args.data}: skipped.")
        return
    tr, te = read_mulan(args.data, "train"), read_mulan(args.data, "test")
    mean, std = tr.x.mean(0), tr.x.std(0) + 1e-6
    x_tr = torch.from_numpy((tr.x - mean) / std).float()
    x_te = torch.from_numpy((te.x - mean) / std).float()
    net = train(x_tr, torch.from_numpy(tr.y.astype(np.float32)), args.epochs)
    m = te.y.shape[1]
    dense, head = ClassSimilarity(m), HeadSimilarity(256)
    with torch.no_grad():
        for part in x_te.split(512):
            features = net[:3](part)
            head.update(features)
            dense.update(net[3](features))
    start = time.perf_counter()
    matrix = dense.compute().double().numpy()
    t_dense = time.perf_counter() - start
    start = time.perf_counter()
    emb = head.compute(net[3].weight, net[3].bias)
    t_head = time.perf_counter() - start
    from_head = emb.matrix().double().numpy()
    diff = float(np.abs(from_head - matrix).max())
    print(f"## Delicious: {m} tags, {x_te.shape[0]} test samples, 256 features\n")
    print("| route | state | compute | max abs difference from the dense matrix |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| dense (ClassSimilarity over the logits) | {8 * m * m / 1e6:.1f} MB | {t_dense:.3f} s | |")
    print(f"| head (HeadSimilarity over the features) | {8 * 256 * 256 / 1e6:.1f} MB | {t_head:.3f} s | {diff:.1e} |")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        ref = analyze(matrix, method="average", class_names=list(te.label_names))
        t_ref = time.perf_counter() - start
        _embedded.DENSE_MAX = 0  # force the route without the matrix at 983 tags
        start = time.perf_counter()
        tree = analyze(emb, method="average", class_names=list(te.label_names), find_failed=False)
        t_tree = time.perf_counter() - start
    print("\n| analysis (average linkage) | time | groups | levels | cophenetic corr. |")
    print("| --- | ---: | ---: | --- | ---: |")
    for name, r, t in (("dense matrix", ref, t_ref), ("embeddings, without the matrix", tree, t_tree)):
        print(f"| {name} | {t:.2f} s | {r.n_groups} | {[lv.n_groups for lv in r.levels]} | "
              f"{r.metrics['cophenetic_corr']:.4f} |")  # fmt: skip
    print("\nAdjusted Rand index of the two trees cut into the same number of groups:\n")
    print("| groups | ARI |")
    print("| ---: | ---: |")
    for k in sorted({2, 4, 8, 16, 32, 64, ref.n_groups, *[lv.n_groups for lv in ref.levels]}):
        ari = adjusted_rand_index(cut_maxclust(tree.linkage, k), cut_maxclust(ref.linkage, k))
        print(f"| {k} | {ari:.3f} |")
    near_dense = np.argsort(-(matrix - 2 * np.eye(m)), axis=1)[:, :16]
    near_head, _ = _embedded.neighbours(emb.vectors.numpy(), 16)
    recall = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(near_dense.tolist(), near_head.tolist())])
    print(f"\nThe 16 nearest tags of every tag: {recall:.1%} the same.")
    pairs = [f"{p.kind}: {p.a} / {p.b}".rstrip(" /") for p in tree.pairs]
    pairs_ref = [f"{p.kind}: {p.a} / {p.b}".rstrip(" /") for p in ref.pairs]
    print(f"Pairs worth a look, dense: {pairs_ref}; from embeddings: {pairs}.")
    images = [
        render_heatmap(matrix, ref.order, ref.groups, max_pixels=512, min_pixels=512),
        render_heatmap(matrix, tree.order, tree.groups, max_pixels=512, min_pixels=512),
    ]
    gap = np.full((images[0].shape[0], 12, 3), 255, dtype=np.uint8)
    save_png(np.concatenate([images[0], gap, images[1]], axis=1), FIGURE)
    print(f"\nFigure: {FIGURE.relative_to(FIGURE.parents[1])} (left: the dense order and groups; right: the head "
          "route's, the same matrix).")  # fmt: skip


if __name__ == "__main__":
    main()
