"""The explorer's size and load time: ``python benchmarks/bench_explorer.py`` (about 2 min; needs chromium,
chromedriver and selenium; ``--sizes 1000`` for a quick run).

For m classes and 12 epochs (a clustered correlation matrix, a little different each epoch), in the same run:
the time to build the page (:func:`lightning_classim.explorer.explorer_html`), its size, and the time until it is
ready in headless Chromium (from ``driver.get`` to ``window.classim.ready``), next to the time Chromium takes to
load a plain page of the same size (the baseline: reading the file). Also the largest difference between
``classim.cell`` and the matrix at 2,000 random cells (exact cells; at 10,000 classes the cells off the diagonal band
and off the nearest-class lists are block means, reported apart). Results: ``results_bench_explorer_cpu.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from lightning_classim import analyze
from lightning_classim.explorer import ExplorerEpoch, explorer_html


def matrices(m: int, epochs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = max(2, m // 40)
    centres = rng.standard_normal((k, 64))
    labels = rng.integers(0, k, m)
    base = centres[labels] * 1.5 + rng.standard_normal((m, 64))
    for e in range(epochs):
        rows = base + (epochs - e) * 0.3 * rng.standard_normal((m, 64))
        yield np.corrcoef(rows).astype(np.float32)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def ready_time(driver, path: str) -> float:
    start = time.perf_counter()
    driver.get("file://" + path)
    while not driver.execute_script("return !!(window.classim && window.classim.ready)"):
        if time.perf_counter() - start > 60:
            raise TimeoutError(path)
        time.sleep(0.01)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    driver = browser()
    print("| m | epochs | build | file | ready in Chromium | plain page of that size | max error of exact cells |"
          " block-mean cells |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for m in [int(s) for s in args.sizes.split(",")]:
            sims = list(matrices(m, args.epochs))
            epochs = [ExplorerEpoch(e, 10 * e, analyze(s, find_failed=False)) for e, s in enumerate(sims)]
            start = time.perf_counter()
            page = explorer_html(epochs, title=f"bench {m}")
            build = time.perf_counter() - start
            path = os.path.join(tmp, f"explorer_{m}.html")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(page)
            plain = os.path.join(tmp, f"plain_{m}.html")
            with open(plain, "w", encoding="utf-8") as fh:
                fh.write('<!DOCTYPE html><html><body><script type="application/json">' + "x" * len(page)
                         + "</script><script>window.classim={ready:true}</script></body></html>")  # fmt: skip
            base = min(ready_time(driver, plain) for _ in range(2))
            ready = min(ready_time(driver, path) for _ in range(2))
            rng = np.random.default_rng(1)
            cells = rng.integers(0, m, (2000, 2))
            order = epochs[-1].result.order
            script = (
                "return arguments[0].map(([i, j]) => { const c = classim.cell(i, j); "
                "return [c.value, c.approximate]; })"
            )
            got = driver.execute_script(script, cells.tolist())
            truth = sims[-1][order[cells[:, 0]], order[cells[:, 1]]]
            exact = np.array([not a for _, a in got])
            err = np.abs(np.array([v for v, _ in got])[exact] - truth[exact]).max()
            size = os.path.getsize(path) / 1e6
            print(f"| {m} | {args.epochs} | {build:.1f} s | {size:.1f} MB | {ready:.2f} s | {base:.2f} s | {err:.4f} | "
                  f"{(~exact).mean():.0%} |", flush=True)  # fmt: skip
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
