"""HeadSimilarity (the features' covariance) next to ClassSimilarity (the dense matrix).

Run: ``python benchmarks/bench_head.py`` (about 5 min on 2 CPU cores).

In the same run, on this machine's CPU (``--device cuda`` on a GPU machine):

1. Update cost per sample, batches of 1,024: the dense metric at m = 1,000 to 20,000 classes (its state is
   ``8 m^2`` bytes: 3.2 GB at 20,000), the head route at D = 256 and 512 (independent of m), and where the head route
   overtakes the dense one once its epoch-end work (``compute`` with the weight, one eigendecomposition and one
   ``(m, D) x (D, D)`` product) is counted per sample of a 50,000-sample validation set.
2. At m = 100,000 and D = 256: state size, ``compute(weight)``, and the exact 10 nearest classes of every class
   (``ClassEmbeddings.neighbours``, blocks of 4,096 rows), with the peak memory of the process.
3. m = 1,000,000 on paper: state and embedding sizes, neighbour cost.

Results: ``results_bench_head_<device>.md``.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lightning_classim import ClassSimilarity, HeadSimilarity


def per_sample(metric, batch: torch.Tensor, repeats: int = 5) -> float:
    metric.update(batch)  # warm up, open the block
    if batch.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        metric.update(batch)
    metric._fold()
    if batch.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (repeats * batch.shape[0])


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=100_000)
    args = parser.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if dev.type == "cuda":  # the first product on a GPU starts its libraries: not the first route's cost
        (torch.randn(1024, 1024, device=dev) @ torch.randn(1024, 1024, device=dev)).sum().item()
    n_val = 50_000
    print("## Update cost per sample (batches of 1,024)\n")
    print("| route | m | D | state | update per sample | epoch end | per sample incl. epoch end (50,000 samples) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    dense = {}
    for m in (1_000, 4_000, 8_000, 16_000, 20_000):
        metric = ClassSimilarity(m).to(dev)
        t = per_sample(metric, torch.randn(1024, m, device=dev), repeats=3 if m <= 4000 else 1)
        start = time.perf_counter()
        metric.compute()
        end = time.perf_counter() - start
        dense[m] = t + end / n_val
        state = f"{8 * m * m / 1e9:.2f} GB"
        print(f"| dense | {m:,} | | {state} | {t * 1e6:.1f} us | {end:.2f} s | {dense[m] * 1e6:.1f} us |", flush=True)
        del metric
    for d in (256, 512):
        metric = HeadSimilarity(d).to(dev)
        t = per_sample(metric, torch.randn(1024, d, device=dev))
        metric.compute(torch.randn(10, d, device=dev))  # warm up: the first eigendecomposition loads its library
        for m in (1_000, 4_000, 8_000, 16_000, 20_000):
            weight = torch.randn(m, d, device=dev)
            start = time.perf_counter()
            metric.compute(weight)
            end = time.perf_counter() - start
            total = t + end / n_val
            faster = f" ({dense[m] / total:.0f}x faster)" if m in dense else ""
            print(f"| head | {m:,} | {d} | {8 * d * d / 1e6:.1f} MB | {t * 1e6:.2f} us | {end:.3f} s | "
                  f"{total * 1e6:.2f} us{faster} |", flush=True)  # fmt: skip

    m, d = args.classes, 256
    print(f"\n## m = {m:,}, D = {d}\n")
    metric = HeadSimilarity(d).to(dev)
    for _ in range(10):
        metric.update(torch.randn(1024, d, device=dev) @ torch.randn(d, d, device=dev))
    weight = torch.randn(m, d, device=dev)
    start = time.perf_counter()
    emb = metric.compute(weight)
    t_compute = time.perf_counter() - start
    start = time.perf_counter()
    emb.neighbours(10)
    t_near = time.perf_counter() - start
    print("| state | compute(weight) | embeddings | exact 10 nearest of every class | peak memory of the process (the "
          "dense runs above included) |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {8 * d * d / 1e6:.1f} MB | {t_compute:.2f} s | {emb.vectors.numel() * 4 / 1e6:.0f} MB | {t_near:.1f} s | "
          f"{peak_gb():.1f} GB |")  # fmt: skip
    print(
        f"\nThe dense state at m = {m:,} would take {8 * m * m / 1e9:,.0f} GB and {2 * m * m / 1e9:.0f} GFLOP a sample."
    )
    big = 1_000_000
    print(f"\nOn paper, m = {big:,}, D = {d}: state {8 * d * d / 1e6:.1f} MB; embeddings {big * d * 4 / 1e9:.1f} GB; "
          f"exact neighbours {2 * big * big * d / 1e12:.0f} TFLOP ({t_near * (big / m) ** 2 / 3600:.1f} h here, at "
          "the rate measured above); the dense state 8 TB.")  # fmt: skip


if __name__ == "__main__":
    main()
