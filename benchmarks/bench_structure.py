"""Time of the structure analysis and of the heatmap rendering, next to their baselines in the same run.

Run: ``python benchmarks/bench_structure.py`` (``--sizes 365 1000`` for a quick run). The linkage baselines and
``analyze`` alternate, best of 7 (2 at m = 10,000); the renders are best of 3 (1).

For each m, on a similarity matrix of realistic structure (the correlation of low-rank plus noise rows):

* ``analyze``: :func:`lightning_classim.analyze` with its defaults (complete linkage, automatic number of groups by
  silhouette, summaries, structure metrics, split and failed groups), next to *scipy's linkage alone* as a user
  would call it on the matrix: ``linkage(squareform(1 - S, checks=False), "complete")``; and, for reference, the
  bare ``linkage`` call on a condensed distance vector made beforehand (without the user's ``1 - S`` and
  ``squareform``, which cost about as much as the linkage itself at m = 10,000).
* ``analyze, no failed groups``: the same with ``find_failed=False`` (no search for failed groups).
* ``required steps``: the steps that any run of ``analyze`` needs whatever its options, each timed alone with the
  package's own (fastest) code: the input check (symmetry and finiteness), the moments of the pairs, the linkage
  (compiled, with the square matrix it works in), the leaf order, one pass of sums over groups, and the cophenetic
  sums over the tree. Their sum against the user's linkage call shows how much room a target "analysis within 1.5x
  of the linkage" leaves for the silhouettes, summaries, split and failed groups.
* ``analyze, numpy and scipy only``: the same with the compiled kernels turned off (``LIGHTNING_CLASSIM_NUMBA=0``),
  i.e. scipy's linkage inside.
* ``linkage``: the compiled nearest-neighbour chain that ``analyze`` uses (``lightning_classim.structure._kernels``,
  equal to scipy's bit for bit; timed with making the square matrix it works in, as ``analyze`` makes it) next to
  scipy's bare linkage call on a condensed vector.
* ``stall``: the longest pause of a Python loop on the main thread while ``analyze`` runs on a worker thread (as the
  callback's ``async_analysis`` does), with and without the compiled kernels: scipy's linkage holds the GIL.
* ``with failed groups``: the matrix above has none, and there the search ends after its pass over the pairs (none
  stands out from the noise). On a matrix with planted failed groups (sub-groups of 10 classes; 8 sets of 6
  classes, each taking one class from 6 sub-groups and sharing a factor, as in the tests), cut at the planted number
  of sub-groups (``n_groups=m // 10``; m <= 4000, the generating data would take minutes at 10,000): the search then
  runs fuzzy c-means on the classes of the residual graph (up to its 60 iterations), next to the same call with
  ``find_failed=False``.
* ``picture``: the labelled picture the callback logs (:func:`labelled_heatmap`: the heatmap with class names or group
  labels, a colour bar and a title) plus :func:`save_png`, next to the bare heatmap and to matplotlib.
* ``render``: :func:`render_heatmap` (1024 px budget) plus :func:`save_png`, next to matplotlib ``imshow`` +
  ``savefig`` of the same ordered matrix at full resolution (one pixel per cell, as a user would to see every
  class).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from lightning_classim import analyze, render_heatmap, save_png
from lightning_classim.picture import labelled_heatmap
from lightning_classim.structure import _kernels
from lightning_classim.structure._analyze import TREE_COPHENET_MIN


def similarity(m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, max(2, m // 40), m)
    centres = rng.standard_normal((max(2, m // 40), 300))
    rows = centres[groups] + 1.5 * rng.standard_normal((m, 300))
    return np.corrcoef(rows)


def planted_failed_groups(
    rng: np.random.Generator,
    subs: int,
    per: int,
    failed: int,
    a: float = 1.5,
    size: int = 6,
    n: int = 3000,
    share: int = 0,
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """``subs`` sub-groups of ``per`` classes with ``failed`` planted failed groups (the tests' design): the matrix
    and the planted sets. Each set takes one class from ``size`` sub-groups and adds a shared factor of weight ``a``.
    With ``share``, each set after the first reuses that many classes of the one before (they carry both factors):
    a chain of overlapping failed groups.
    """
    sub = np.repeat(np.arange(subs), per)
    f_sub = rng.standard_normal((n, subs))
    x = 1.5 * f_sub[:, sub] + 0.6 * rng.standard_normal((n, subs * per))
    wanted: list[tuple[int, ...]] = []
    previous = np.zeros(0, dtype=np.intp)
    for g in range(failed):
        subs_g = np.arange(size * g, size * g + size) % subs
        members = subs_g * per + g % per
        shared = a * rng.standard_normal(n)[:, None]
        columns = shared + 1.5 * f_sub[:, subs_g] + 0.6 * rng.standard_normal((n, size))
        if share and g:
            members[:share] = previous[-share:]
            columns[:, :share] = x[:, members[:share]] + shared
        x[:, members] = columns
        wanted.append(tuple(sorted(members.tolist())))
        previous = members
    return np.corrcoef(x, rowvar=False), wanted


def planted_failed(m: int, failed: int = 8, seed: int = 0) -> tuple[np.ndarray, int, list[tuple[int, ...]]]:
    """Sub-groups of 10 classes (5 below 1,000 classes) with ``failed`` planted failed groups of 6: the matrix, the
    number of sub-groups and the planted sets."""
    per = 10 if m >= 1000 else 5
    sim, wanted = planted_failed_groups(np.random.default_rng(seed), m // per, per, failed)
    return sim, m // per, wanted


def best_of(fn: object, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best


def required_steps(sim: np.ndarray, repeats: int) -> dict[str, float]:
    """Best-of times of the steps every analysis needs (package internals: this is a benchmark, not an API)."""
    from scipy.cluster.hierarchy import cophenet

    from lightning_classim.structure._backend import ops
    from lightning_classim.structure._groups import BlockSums
    from lightning_classim.structure._tree import Distances, as_similarity_matrix, children, leaf_order

    m = sim.shape[0]
    condensed = squareform(1 - sim, checks=False)
    z = linkage(condensed, "complete")
    order = leaf_order(z)
    ranges = ops().merge_ranges(children(z), order)
    labels = np.arange(m) % max(2, min(120, m // 2))
    compiled = _kernels.available()
    steps = {
        "input check": lambda: as_similarity_matrix(sim),
        "moments of the pairs": lambda: Distances(sim, "correlation", "complete").moments,
        "linkage": lambda: (
            _kernels.nn_chain_linkage(_kernels.one_minus(sim), "complete")
            if compiled
            else linkage(condensed, "complete")
        ),
        "leaf order": lambda: leaf_order(z),
        "one pass of group sums": lambda: BlockSums(sim, labels),
    }
    if m < TREE_COPHENET_MIN:  # above it, the cophenetic sums come from the fine block sums of the silhouettes
        steps["cophenetic sums"] = lambda: (
            _kernels.merge_cross_sums(sim, order, ranges) if compiled else float(np.dot(cophenet(z), condensed))
        )
    return {name: best_of(fn, repeats) for name, fn in steps.items()}


def without_kernel(fn: object) -> object:
    """``fn`` with the compiled kernels turned off (numpy, and scipy's linkage, inside ``analyze``)."""

    def run() -> object:
        enabled, _kernels.ENABLED = _kernels.ENABLED, False
        try:
            return fn()  # type: ignore[operator]
        finally:
            _kernels.ENABLED = enabled

    return run


def longest_stall(fn: object) -> float:
    """Longest pause of a Python loop on this thread while ``fn`` runs on a worker thread."""
    finished = threading.Event()

    def work() -> None:
        fn()  # type: ignore[operator]
        finished.set()

    thread = threading.Thread(target=work)
    longest = 0.0
    last = time.perf_counter()
    thread.start()
    while not finished.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    thread.join()
    return longest


def with_failed_groups(m: int) -> str:
    """A table row: the analysis of a matrix with planted failed groups, next to the linkage alone."""
    sim, subs, wanted = planted_failed(m)
    found = analyze(sim, n_groups=subs).failed_groups
    hits = len({f.members for f in found} & set(wanted))
    t_link = t_an = t_nofail = float("inf")
    for _ in range(7 if m <= 1000 else 3):
        t_link = min(t_link, best_of(lambda s=sim: linkage(squareform(1 - s, checks=False), "complete"), 1))
        t_an = min(t_an, best_of(lambda s=sim: analyze(s, n_groups=subs), 1))
        t_nofail = min(t_nofail, best_of(lambda s=sim: analyze(s, n_groups=subs, find_failed=False), 1))
    return (
        f"| {m} | {hits} of {len(wanted)} (and {len(found) - hits} others) | {t_link * 1e3:.1f} ms | "
        f"{t_an * 1e3:.1f} ms | {t_an / t_link:.2f}x | {t_nofail * 1e3:.1f} ms | {t_nofail / t_link:.2f}x |"
    )


def matplotlib_png(mat: np.ndarray, path: str) -> None:
    from matplotlib.figure import Figure

    m = mat.shape[0]
    dpi = 100
    fig = Figure(figsize=(m / dpi, m / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.savefig(path, dpi=dpi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[365, 1000, 4000, 10000])
    args = parser.parse_args()
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(
        "| m | scipy linkage alone | analyze | analyze/linkage | analyze, no failed groups | its ratio | "
        "analyze, numpy and scipy only | its ratio | bare linkage call | analyze/bare | groups found | render + PNG | "
        "matplotlib imshow + savefig | matplotlib/render | PNG sizes (ours / matplotlib) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    tmp = tempfile.mkdtemp()
    floors: list[tuple[int, float, dict[str, float]]] = []
    kernels: list[tuple[int, float, float, float, float]] = []
    planted: list[str] = []
    pictures: list[tuple[int, float, float, float]] = []
    for m in args.sizes:
        sim = similarity(m)
        repeats = 7 if m <= 4000 else 2
        result = analyze(sim)
        # the linkage baselines and analyze alternate, so that all see the same state of the machine (the page faults
        # of the large condensed vectors move single timings by 10-20%); best of each
        t_link = t_bare = t_an = t_nofail = t_scipy = t_ours = float("inf")
        for _ in range(repeats):
            t_link = min(t_link, best_of(lambda s=sim: linkage(squareform(1 - s, checks=False), "complete"), 1))
            condensed = squareform(1 - sim, checks=False)
            t_bare = min(t_bare, best_of(lambda y=condensed: linkage(y, "complete"), 1))
            del condensed
            if _kernels.available():  # with the square matrix made as analyze makes it
                t_ours = min(
                    t_ours, best_of(lambda s=sim: _kernels.nn_chain_linkage(_kernels.one_minus(s), "complete"), 1)
                )
            t_an = min(t_an, best_of(lambda s=sim: analyze(s), 1))
            t_nofail = min(t_nofail, best_of(lambda s=sim: analyze(s, find_failed=False), 1))
            t_scipy = min(t_scipy, best_of(without_kernel(lambda s=sim: analyze(s)), 1))
        stall_ours = longest_stall(lambda s=sim: analyze(s))
        stall_scipy = longest_stall(without_kernel(lambda s=sim: analyze(s)))
        kernels.append((m, t_bare, t_ours, stall_ours, stall_scipy))
        repeats = 3 if m <= 4000 else 1
        ordered = sim[np.ix_(result.order, result.order)]
        ours = os.path.join(tmp, f"ours_{m}.png")
        theirs = os.path.join(tmp, f"mpl_{m}.png")
        t_render = best_of(lambda s=sim, r=result, p=ours: save_png(render_heatmap(s, r.order, r.groups), p), repeats)
        t_mpl = best_of(lambda o=ordered, p=theirs: matplotlib_png(o, p), 1)
        names = [f"class {i}" for i in range(m)]

        def picture(s=sim, r=result, n=names, p=ours) -> None:
            save_png(labelled_heatmap(s, r.order, r.groups, class_names=n, title="classim, epoch 9").image, p)

        t_picture = best_of(picture, repeats)
        pictures.append((m, t_render, t_picture, t_mpl))
        size_ours = os.path.getsize(ours) / 1e6
        size_mpl = os.path.getsize(theirs) / 1e6
        print(
            f"| {m} | {t_link * 1e3:.1f} ms | {t_an * 1e3:.1f} ms | {t_an / t_link:.2f}x | "
            f"{t_nofail * 1e3:.1f} ms | {t_nofail / t_link:.2f}x | {t_scipy * 1e3:.1f} ms | {t_scipy / t_link:.2f}x | "
            f"{t_bare * 1e3:.1f} ms | {t_an / t_bare:.2f}x | {result.n_groups} | {t_render:.3f} s | "
            f"{t_mpl:.2f} s | {t_mpl / t_render:.1f}x | {size_ours:.2f} MB / {size_mpl:.1f} MB |",
            flush=True,
        )
        floors.append((m, t_link, required_steps(sim, repeats)))
        if m <= 4000:
            planted.append(with_failed_groups(m))
    print(
        "\n| m | scipy linkage (bare) | compiled linkage (with its square matrix) | speed-up | "
        "longest stall of the main thread while analyze runs on a worker thread: compiled / numpy and scipy only |"
    )
    print("| --- | --- | --- | --- | --- |")
    for m, t_bare, t_ours, stall_ours, stall_scipy in kernels:
        print(
            f"| {m} | {t_bare * 1e3:.1f} ms | {t_ours * 1e3:.1f} ms | {t_bare / t_ours:.2f}x | "
            f"{stall_ours * 1e3:.0f} ms / {stall_scipy * 1e3:.0f} ms |"
        )
    print(
        "\n| m | planted failed groups found | scipy linkage alone | analyze (n_groups = sub-groups) | its ratio | "
        "same, find_failed=False | its ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in planted:
        print(row)
    print("\n| m | scipy linkage alone | required steps | required/linkage | of which |")
    print("| --- | --- | --- | --- | --- |")
    for m, t_link, steps in floors:
        total = sum(steps.values())
        parts = ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in steps.items())
        print(f"| {m} | {t_link * 1e3:.2f} ms | {total * 1e3:.2f} ms | {total / t_link:.2f}x | {parts} |")
    print("\n| m | heatmap + PNG | labelled picture + PNG | picture/heatmap | matplotlib/picture |")
    print("| --- | --- | --- | --- | --- |")
    for m, t_render, t_picture, t_mpl in pictures:
        print(
            f"| {m} | {t_render:.3f} s | {t_picture:.3f} s | {t_picture / t_render:.2f}x | {t_mpl / t_picture:.1f}x |"
        )


if __name__ == "__main__":
    main()
