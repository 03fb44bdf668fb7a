"""Where the time of ``ClassSimilarity.update`` goes, step by step, against a bare ``X.T @ X``.

Run: ``python benchmarks/profile_update.py --device cuda`` on a GPU machine (``--device cpu`` here; about 30 s at
the defaults). On an NVIDIA H200 an update cost 6.5x-15x a bare float32 ``X.T @ X`` of the same batch
(``results_bench_metric_cuda.md``), against about 1x on the CPU; this script times each step of an update on its
own (the device synchronised around each), so that the next session with a GPU sees which one it is:

* ``transform``: ``transform_scores`` (logits: a dtype check);
* ``addcmul``: the shift and scale, ``z = (x - K) / c``;
* ``addmm``: the block's cross-product sum, ``s2 += z^T z`` (the bare product's work);
* ``sum`` and ``aminmax``: the block's column sums and the batch's per-class range;
* ``fold``: the fold of a block into the float64 state (once every ``block_rows`` rows), per batch;
* ``update``: the whole ``ClassSimilarity.update``, per batch, and torch.profiler's top CUDA kernels over 10 of them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from lightning_classim import ClassSimilarity
from lightning_classim._streaming import block_start, fold_block, new_stats, transform_scores


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn``, the device synchronised before and after."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def one_size(m: int, args: argparse.Namespace, dev: torch.device) -> None:
    """One row of the table (and the profile, with ``--profile``) for ``m`` classes."""
    x = torch.randn(args.batch, m, device=dev)
    block = block_start(x, None)
    z = torch.addcmul(block.offset, x, block.inverse)
    stats = new_stats(m, dev)
    metric = ClassSimilarity(m).to(dev)
    per_fold = metric.block_rows / args.batch
    ms = {
        "bare": timed(lambda: x.T @ x, dev, args.repeats),
        "transform": timed(lambda: transform_scores(x, "logits", False), dev, args.repeats),
        "addcmul": timed(lambda: torch.addcmul(block.offset, x, block.inverse), dev, args.repeats),
        "addmm": timed(lambda: block.s2.addmm_(z.T, z), dev, args.repeats),
        "sum": timed(lambda: block.s1.add_(z.sum(dim=0)), dev, args.repeats),
        "aminmax": timed(lambda: torch.aminmax(x, dim=0), dev, args.repeats),
        "fold": timed(lambda: fold_block(block, stats), dev, max(1, args.repeats // 5)) / per_fold,
        "update": timed(lambda: metric.update(x), dev, args.repeats),
    }
    cells = " | ".join(f"{1e3 * ms[k]:.2f} ms" for k in ms)
    print(f"| {m} | {cells} | {ms['update'] / ms['bare']:.2f}x |", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(10):
                metric.update(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=48))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="also torch.profiler's top kernels of 10 updates")
    args = parser.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {dev}, batch {args.batch}")
    print("| m | bare X.T@X | transform | addcmul | addmm | sum | aminmax | fold (per batch) | update | update/bare |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in args.classes:
        one_size(m, args, dev)


if __name__ == "__main__":
    main()
