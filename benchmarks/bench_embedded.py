"""analyze(embeddings): the structure analysis without the m x m matrix, next to the dense analysis.

Run: ``python benchmarks/bench_embedded.py`` (about 10 min on 2 CPU cores; ``--quick`` stops at 100,000 classes).

A head with known nested structure: ``m`` class weights drawn around 1 of ``m / 250`` family centres and 1 of
``m / 25`` subfamily centres in ``D = 256`` dimensions, features with a random covariance; the class embeddings come
from :class:`HeadSimilarity` over 20,480 feature vectors. In the same run:

1. Agreement at m = 10,000: the embedding route (``analyze(embeddings)``) against the dense analysis of the same
   matrix (``analyze(embeddings.matrix())``, average linkage, and the default complete linkage): adjusted Rand index
   of the groups at the same number of groups (the dense primary level and both levels), of each with the planted
   families, the cophenetic correlations, the recall of the 16 nearest classes of the probed search (the route's
   search above 20,000 classes, forced here), and the times.
2. m = 10,000 to 1,000,000 at D = 256: epoch-end time (``compute(weight)`` plus ``analyze``), each size in its own
   process for its peak memory.
3. ``--callback``: a real ``Trainer.fit`` at m = 100,000 with ``ClassSimilarityCallback(head="fc")``: how long the
   training thread waits at each epoch end, and how long the analysis takes on the worker thread.

Results: ``results_bench_embedded_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lightning_classim import HeadSimilarity, analyze
from lightning_classim._stats import adjusted_rand_index
from lightning_classim.structure import _embedded
from lightning_classim.structure._tree import cut_maxclust


def head(m: int, d: int = 256, seed: int = 0) -> tuple[torch.Tensor, HeadSimilarity, np.ndarray]:
    """The weights, the metric fed 20,480 features, and the planted families."""
    g = torch.Generator().manual_seed(seed)
    families, subfamilies = max(2, m // 250), max(4, m // 25)
    sub = torch.arange(m) % subfamilies
    fam = sub % families
    weight = (torch.randn(families, d, generator=g)[fam] + 0.8 * torch.randn(subfamilies, d, generator=g)[sub]
              + 1.2 * torch.randn(m, d, generator=g))  # fmt: skip
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    metric = HeadSimilarity(d)
    for _ in range(20):
        metric.update(torch.randn(1024, d, generator=g) @ mix)
    return weight, metric, fam.numpy()


def peak_gb() -> float:
    """This process's peak resident memory (``VmHWM``: since its start, not its parent's, as ``ru_maxrss`` is)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def one_size(m: int) -> dict[str, float]:
    weight, metric, fam = head(m)
    start = time.perf_counter()
    emb = metric.compute(weight)
    t_compute = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analyze(emb, method="average", find_failed=False)
    t_analyze = time.perf_counter() - start
    peak = peak_gb()
    return {"m": m, "compute": t_compute, "analyze": t_analyze, "peak_gb": peak, "n_groups": result.n_groups,
            "levels": [level.n_groups for level in result.levels],
            "family_ari": adjusted_rand_index(cut_maxclust(result.linkage, int(fam.max()) + 1), fam)}  # fmt: skip


def agreement(m: int = 10_000) -> None:
    weight, metric, fam = head(m)
    emb = metric.compute(weight)
    k_fam = int(fam.max()) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        tree = analyze(emb, method="average", find_failed=False)
        t_tree = time.perf_counter() - start
        matrix = emb.matrix().numpy()
        start = time.perf_counter()
        dense = analyze(matrix, method="average")
        t_dense = time.perf_counter() - start
        complete = analyze(matrix)
    print(f"## Agreement at m = {m:,}, D = 256 ({k_fam} planted families)\n")
    print("| analysis | time | groups | levels | cophenetic corr. | ARI with the families (cut into "
          f"{k_fam}) |")  # fmt: skip
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for name, r, t in (("embedding route", tree, t_tree), ("dense, average linkage", dense, t_dense),
                       ("dense, complete linkage (default)", complete, float("nan"))):  # fmt: skip
        ari = adjusted_rand_index(cut_maxclust(r.linkage, k_fam), fam)
        shown = f"{t:.2f} s" if t == t else ""
        print(f"| {name} | {shown} | {r.n_groups} | {[lv.n_groups for lv in r.levels]} | "
              f"{r.metrics['cophenetic_corr']:.4f} | {ari:.4f} |")  # fmt: skip
    print("\nAdjusted Rand index of the embedding route's cut with the dense analysis's cut into the same number:\n")
    print("| k | with dense average | with dense complete |")
    print("| ---: | ---: | ---: |")
    ks = sorted({10, 20, 100, 200, 400, dense.n_groups, *[lv.n_groups for lv in dense.levels], k_fam})
    for k in ks:
        ours = cut_maxclust(tree.linkage, k)
        print(f"| {k} | {adjusted_rand_index(ours, cut_maxclust(dense.linkage, k)):.4f} | "
              f"{adjusted_rand_index(ours, cut_maxclust(complete.linkage, k)):.4f} |")  # fmt: skip
    vectors = emb.vectors.numpy()
    exact_idx, _ = _embedded.neighbours(vectors, 16)
    _embedded.EXACT_NEIGHBOURS_MAX = 0
    leaves = _embedded.leaf_clusters(vectors, _embedded.leaf_size_for(m), 0)
    start = time.perf_counter()
    probed_idx, _ = _embedded.neighbours(vectors, 16, leaves)
    t_probe = time.perf_counter() - start
    _embedded.EXACT_NEIGHBOURS_MAX = 20_000
    recall = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(exact_idx.tolist(), probed_idx.tolist())])
    print(f"\nThe 16 nearest classes: exact at this size (blocks of all pairs). The probed search used above 20,000 "
          f"classes finds {recall:.1%} of them here ({t_probe:.2f} s).\n")  # fmt: skip


def in_the_callback(m: int = 100_000, d: int = 256) -> None:
    """A real ``Trainer.fit`` with ``ClassSimilarityCallback(head="fc")``: what the training thread waits for."""
    import tempfile

    import pytorch_lightning as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_classim import ClassSimilarityCallback, StructureOptions

    class Wide(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(64, d), nn.ReLU())
            self.fc = nn.Linear(d, m)

        def forward(self, x):
            return self.fc(self.body(x))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(4096, 64, generator=g), torch.randint(0, m, (4096,), generator=g)),
                      batch_size=512)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cb = ClassSimilarityCallback(m, head="fc", options=StructureOptions(method="average", find_failed=False),
                                     save_dir=tmp)  # fmt: skip
        trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, logger=False, default_root_dir=tmp, callbacks=[cb],
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                             num_sanity_val_steps=0)  # fmt: skip
        start = time.perf_counter()
        trainer.fit(Wide(), data, data)
        total = time.perf_counter() - start
    print(f"\n## In the callback: m = {m:,}, D = {d}, 2 epochs of `Trainer.fit` (4,096 validation samples)\n")
    print("| epoch | training thread waits at the epoch end | analysis, pictures, files (worker thread) |")
    print("| ---: | ---: | ---: |")
    for i, (wait, work) in enumerate(zip(cb.epoch_end_wait_s, cb.analysis_s)):
        print(f"| {i} | {wait:.2f} s | {work:.1f} s |")
    print(f"\nThe whole fit: {total:.0f} s; peak memory of the process {peak_gb():.1f} GB.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="stop at 100,000 classes")
    parser.add_argument("--sizes-only", action="store_true", help="skip the agreement at 10,000 classes")
    parser.add_argument("--agreement-only", action="store_true", help="only the agreement at 10,000 classes")
    parser.add_argument("--callback", action="store_true", help="only the callback at 100,000 classes")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    if args.callback:
        in_the_callback()
        return
    if not args.sizes_only:
        agreement()
    if args.agreement_only:
        return
    print("## Epoch end at D = 256: compute(weight) and analyze(embeddings), one process per size\n")
    print("| m | compute(weight) | analyze | epoch end | groups | levels | ARI with the families | peak memory |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    sizes = [10_000, 30_000, 100_000] + ([] if args.quick else [300_000, 1_000_000])
    for m in sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(m)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["compute"] + r["analyze"]
        print(f"| {m:,} | {r['compute']:.2f} s | {r['analyze']:.1f} s | {total:.1f} s | {r['n_groups']} | "
              f"{r['levels']} | {r['family_ari']:.3f} | {r['peak_gb']:.1f} GB |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
