"""How the levels rule (``lightning_classim.structure._levels``) and the pairs search behave on known structure.

Run: ``python benchmarks/study_levels.py`` (about 1 min on 2 CPU cores; ``--seeds 2`` for a quick run).

1. Planted superclasses of subclasses: scores ``1.5 f_super + 1.0 f_sub + noise * e`` (a factor per superclass and per
   subclass, white noise), correlated over 3,000 samples. A design counts as *found* when the levels are exactly the
   two planted cuts (both adjusted Rand indices 1.0), as *distinct* when both are distinct levels.
2. Matrices without structure: white, low-rank (10 factors plus noise) and skewed (log-normal) scores, m = 48 to
   1,000. What matters is how often a level is called *distinct* (a false positive); reading levels are found on
   noise too, and say so ("the blocks are weak").
3. Planted pairs: a near duplicate (two classes of one subclass share all their scores), an outlier (two classes of
   different superclasses share an extra factor) and a hub (a class mixes all the others); how often each is listed,
   and how many other pairs are listed beside them.

The figures are in ``benchmarks/results_study_levels_cpu.md`` and docs/analysis.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from lightning_classim import analyze


def planted(rng: np.random.Generator, sup: int, sub: int, per: int, noise: float, n: int = 3000):
    m = sup * sub * per
    top = np.repeat(np.arange(sup), sub * per)
    mid = np.repeat(np.arange(sup * sub), per)
    x = 1.5 * rng.standard_normal((n, sup))[:, top] + rng.standard_normal((n, sup * sub))[:, mid]
    return x + noise * rng.standard_normal((n, m)), top, mid


def structureless(rng: np.random.Generator, kind: str, m: int, n: int = 2000) -> np.ndarray:
    if kind == "white":
        return rng.standard_normal((n, m))
    if kind == "low-rank":
        return rng.standard_normal((n, 10)) @ rng.standard_normal((10, m)) + rng.standard_normal((n, m))
    return np.exp(rng.standard_normal((n, m)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    start = time.perf_counter()

    print("## Planted superclasses of subclasses\n")
    print("| superclasses x subclasses x classes | noise | runs | both levels exact | both distinct | levels (k) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for sup, sub, per in [(4, 3, 4), (8, 2, 3), (8, 4, 8), (3, 4, 10), (10, 5, 20)]:
        for noise in (2.0, 3.0, 4.0):
            exact = distinct = 0
            seen = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                x, top, mid = planted(rng, sup, sub, per, noise)
                res = analyze(np.corrcoef(x, rowvar=False), find_failed=False)
                ks = [level.n_groups for level in res.levels]
                seen.append("/".join(map(str, ks)) or "-")
                if len(res.levels) == 2:
                    aris = [adjusted_rand_score(t, level.groups) for t, level in zip((top, mid), res.levels)]
                    exact += aris == [1.0, 1.0]
                    distinct += all(level.distinct for level in res.levels)
            print(f"| {sup} x {sub} x {per} | {noise} | {args.seeds} | {exact} | {distinct} | {', '.join(seen)} |",
                  flush=True)  # fmt: skip

    print("\n## No structure: how often a level is called distinct\n")
    print("| scores | m | runs | a distinct level | reading levels (max silhouette) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for kind in ("white", "low-rank", "skewed"):
        for m in (48, 200, 1000):
            false, silhouettes = 0, []
            for seed in range(args.seeds):
                rng = np.random.default_rng(100 + seed)
                res = analyze(np.corrcoef(structureless(rng, kind, m), rowvar=False), find_failed=False)
                false += any(level.distinct for level in res.levels)
                silhouettes += [level.silhouette for level in res.levels]
            top = f"{max(silhouettes):.2f}" if silhouettes else "-"
            print(f"| {kind} | {m} | {args.seeds} | {false} | {top} |", flush=True)

    print("\n## Planted pairs\n")
    print("| kind | runs | found | other pairs listed (mean) |")
    print("| --- | ---: | ---: | ---: |")
    found = {"near_duplicate": 0, "outlier": 0, "hub": 0}
    others = {k: 0 for k in found}
    for seed in range(args.seeds):
        rng = np.random.default_rng(200 + seed)
        x, top, mid = planted(rng, 6, 3, 5, 3.0)
        a, b = np.nonzero(mid == 4)[0][:2]
        x[:, b] = x[:, a] + 0.05 * rng.standard_normal(x.shape[0])  # near duplicate
        c, d = int(np.nonzero(top == 0)[0][-1]), int(np.nonzero(top == 5)[0][-1])
        shared = 1.4 * rng.standard_normal(x.shape[0])
        x[:, c] += shared  # an outlier pair across superclasses
        x[:, d] += shared
        h = int(np.nonzero(top == 3)[0][-1])
        x[:, h] = x.mean(axis=1) * 6 + rng.standard_normal(x.shape[0])  # a hub
        res = analyze(np.corrcoef(x, rowvar=False))
        planted_pairs = {"near_duplicate": {(min(a, b), max(a, b))}, "outlier": {(min(c, d), max(c, d))},
                         "hub": {(h, -1)}}  # fmt: skip
        for kind in found:
            listed = {(p.i, p.j) for p in res.pairs if p.kind == kind}
            found[kind] += bool(listed & planted_pairs[kind])
            others[kind] += len(listed - planted_pairs[kind])
    for kind in found:
        print(f"| {kind.replace('_', ' ')} | {args.seeds} | {found[kind]} | {others[kind] / args.seeds:.1f} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
