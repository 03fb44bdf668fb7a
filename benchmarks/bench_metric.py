"""Speed, memory and accuracy of the streaming metric against a bare matrix product and the naive approach.

Run: ``python benchmarks/bench_metric.py`` (add ``--sizes 365 1000`` for a quick run, ``--device cuda`` on a GPU).

For each number of classes m, over N = 36,500 samples (Places365's validation size) in batches of 256:

* ``update/bare``: time of ``ClassSimilarity.update`` per batch over a bare ``X.T @ X`` of the same shape, in the
  same process (logits; also ranks).
* ``total/naive``: time of the whole streamed computation (updates + compute) over the naive approach of the
  paper's notebook: keep all logits, then ``numpy.corrcoef``.
* ``mem/naive``: peak memory of the streamed computation over the naive one, each measured in a fresh process
  (peak RSS minus the RSS before the data are produced); the streamed peak does not grow with N.
* errors: max abs difference from a float64 ``numpy.corrcoef`` on logits carrying an offset of 1000, for the
  metric, the naive approach (float64 inside numpy) and naive float32 sums.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from lightning_classim import ClassSimilarity

N_SAMPLES = 36_500
BATCH = 256
POOL = 8  # distinct batches cycled through, so data generation stays out of the timings


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset the peak-RSS mark (VmHWM) so that it no longer counts the imports (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _pool(m: int, device: str, offset: float = 0.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(m)
    latent = torch.randn(POOL * BATCH, 16, generator=g)
    load = torch.randn(16, m, generator=g)
    x = latent @ load + torch.randn(POOL * BATCH, m, generator=g) + offset
    return [b.to(device) for b in x.split(BATCH)]


def _batches(pool: list[torch.Tensor]) -> list[torch.Tensor]:
    n_batches = -(-N_SAMPLES // BATCH)
    out = [pool[i % len(pool)] for i in range(n_batches)]
    out[-1] = out[-1][: N_SAMPLES - BATCH * (n_batches - 1)]
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_update(m: int, device: str, repeats: int = 3) -> dict[str, float]:
    batches = _batches(_pool(m, device))
    best: dict[str, float] = {}

    def run(label: str, fn: object) -> None:
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            _sync(device)
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)

    def bare() -> None:
        for b in batches:
            b.T @ b

    def streamed(scores: str) -> object:
        def go() -> None:
            metric = ClassSimilarity(m, scores=scores).to(device)
            for b in batches:
                metric.update(b)
            metric._fold()

        return go

    bare()  # warm-up
    streamed("logits")()
    for _ in range(2):  # interleave to share any drift of the machine
        run("bare", bare)
        run("update", streamed("logits"))
        run("update_ranks", streamed("ranks"))
    metric = ClassSimilarity(m).to(device)
    for b in batches:
        metric.update(b)
    _sync(device)
    t0 = time.perf_counter()
    metric.compute()
    _sync(device)
    best["compute"] = time.perf_counter() - t0
    return best


def time_naive(m: int) -> float:
    batches = _batches(_pool(m, "cpu"))
    t0 = time.perf_counter()
    stored = [b.numpy().copy() for b in batches]
    np.corrcoef(np.concatenate(stored), rowvar=False)
    return time.perf_counter() - t0


def errors(m: int, device: str) -> dict[str, float]:
    """Max abs error against float64 numpy.corrcoef, logits offset by 1000."""
    g = torch.Generator().manual_seed(m + 1)
    latent = torch.randn(N_SAMPLES, 16, generator=g)
    x = (latent @ torch.randn(16, m, generator=g) + torch.randn(N_SAMPLES, m, generator=g) + 1000.0).float()
    ref = np.corrcoef(x.double().numpy(), rowvar=False)
    metric = ClassSimilarity(m).to(device)
    for b in x.to(device).split(BATCH):
        metric.update(b)
    err_metric = float(np.abs(metric.compute().cpu().double().numpy() - ref).max())
    err_naive = float(np.abs(np.corrcoef(x.numpy(), rowvar=False) - ref).max())
    n, s1, s2 = x.shape[0], x.sum(0), x.T @ x  # naive float32 running sums
    cov = s2 / n - torch.outer(s1 / n, s1 / n)
    d = cov.diagonal().clamp(min=1e-12).sqrt()
    err_f32 = float(np.abs((cov / d[:, None] / d[None, :]).clamp(-1, 1).double().numpy() - ref).max())
    return {"err_metric": err_metric, "err_naive": err_naive, "err_f32_sums": err_f32}


def memory_worker(kind: str, m: int, n_samples: int) -> dict[str, float]:
    """Runs in a fresh process: peak RSS growth of one approach (data produced batch by batch)."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    load = torch.randn(16, m, generator=g)
    _reset_peak()
    before = _status_mb("VmRSS")
    n_batches = -(-n_samples // BATCH)
    if kind == "streamed":
        metric = ClassSimilarity(m)
        for _ in range(n_batches):
            metric.update(torch.randn(BATCH, 16, generator=g) @ load)
        metric.compute()
    else:
        stored = [(torch.randn(BATCH, 16, generator=g) @ load).numpy() for _ in range(n_batches)]
        np.corrcoef(np.concatenate(stored), rowvar=False)
    return {"peak_mb": _status_mb("VmHWM") - before}


def memory(m: int, n_samples: int = N_SAMPLES) -> dict[str, float]:
    out = {}
    for kind in ("streamed", "naive"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-worker", kind, str(m), str(n_samples)],
            check=True,
            capture_output=True,
            text=True,
        )
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[365, 1000, 4000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline (large m on a GPU host)")
    parser.add_argument("--memory-worker", nargs=3, metavar=("KIND", "M", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        kind, m, n = args.memory_worker
        print(json.dumps(memory_worker(kind, int(m), int(n))))
        return
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}, {threads} threads, N={N_SAMPLES}, batch {BATCH}")
    header = (
        "| m | bare X.T@X per sample | update per sample | update/bare | ranks update/bare | compute | "
        "streamed total/naive | peak MB streamed / naive (ratio) | peak MB at 4N streamed | "
        "err metric | err naive (f64) | err f32 sums |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for m in args.sizes:
        t = time_update(m, args.device)
        row = [
            f"{m}",
            f"{t['bare'] / N_SAMPLES * 1e6:.2f} us",
            f"{t['update'] / N_SAMPLES * 1e6:.2f} us",
            f"{t['update'] / t['bare']:.2f}x",
            f"{t['update_ranks'] / t['bare']:.2f}x",
            f"{t['compute'] * 1e3:.0f} ms",
        ]
        if args.no_naive:
            row += ["", "", ""]
        else:
            naive = time_naive(m)
            mem = memory(m)
            mem4 = memory(m, 4 * N_SAMPLES)["streamed"] if m <= 1000 else float("nan")
            row += [
                f"{(t['update'] + t['compute']) / naive:.2f}x",
                f"{mem['streamed']:.0f} / {mem['naive']:.0f} ({mem['streamed'] / mem['naive']:.2f}x)",
                f"{mem4:.0f}",
            ]
        e = errors(m, args.device)
        row += [f"{e['err_metric']:.1e}", f"{e['err_naive']:.1e}", f"{e['err_f32_sums']:.1e}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
