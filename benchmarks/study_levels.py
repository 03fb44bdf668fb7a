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
4. Smooth trees, as real classifiers make them: families of classes alike by degrees (each member's loading on its
   family drawn at random), kinds of two classes inside each family alike more strongly, a few odd classes, noise;
   in a two-scale world (families and kinds) and a three-scale one (two super-families above the families, whose
   middle is where the families are). Truth: the families (each odd class alone). Reported: how often a level is the
   families (ARI at least 0.9), the mean ARI of the primary grouping and of the best level, and of the best cut of
   the tree (what any rule could reach).
5. Real data with known families: Enron's 53 labels fall in four annotated families (A coarse genre, B included
   information, C topics, D emotional tone); a one-vs-rest logistic regression's test logits (sklearn), its levels
   and their ARI against the families (skipped where ``../shared/data`` is absent).

The figures are in ``benchmarks/results_study_levels_cpu.md`` and docs/analysis.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import fcluster
from sklearn.metrics import adjusted_rand_score

from lightning_classim import analyze

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mulan"


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


def smooth(rng: np.random.Generator, families: int, per: tuple[int, int], odd: int, noise: float, supers: int = 0,
           n: int = 2000) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Families alike by degrees, kinds of two inside them, odd classes, noise (see the module docstring, 4)."""
    fam = rng.standard_normal((n, families))
    sup = rng.standard_normal((n, max(supers, 1)))
    cols, truth = [], []
    for f in range(families):
        size = int(rng.integers(per[0], per[1] + 1))
        kinds = rng.standard_normal((n, (size + 1) // 2))
        above = rng.uniform(1.0, 1.5) * sup[:, f % supers] if supers else 0.0
        low, high = ((0.4, 0.9), (0.8, 1.4)) if supers else ((0.6, 1.4), (0.0, 0.9))
        for j in range(size):
            cols.append(above + rng.uniform(*low) * fam[:, f] + rng.uniform(*high) * kinds[:, j // 2])
            truth.append(f)
    for o in range(odd):
        cols.append(rng.standard_normal(n) + 0.3 * sup[:, o % max(supers, 1)])
        truth.append(families + o)
    x = np.stack(cols, 1) + noise * rng.standard_normal((n, len(cols)))
    perm = rng.permutation(len(cols))
    return x[:, perm], np.array(truth)[perm]


def enron_logits() -> tuple[np.ndarray, list[str]] | None:
    """Test logits of a one-vs-rest logistic regression on Enron (labels seen in training and in the test set)."""
    from sklearn.linear_model import LogisticRegression

    from lightning_classim.datasets import read_mulan

    if not (DATA / "enron").is_dir():
        return None
    train, test = read_mulan(DATA / "enron", "train"), read_mulan(DATA / "enron", "test")
    keep = [j for j in range(train.y.shape[1]) if 0 < train.y[:, j].sum() < len(train.y) and test.y[:, j].any()]
    logits = []
    for j in keep:
        model = LogisticRegression(C=0.1, max_iter=2000).fit(train.x, train.y[:, j])
        logits.append(model.decision_function(test.x))
    return np.stack(logits, 1), [train.label_names[j] for j in keep]


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

    print("\n## Smooth trees: the families among the levels\n")
    print("| world | families x classes (+ odd) | runs | a level is the families | primary ARI | best level ARI | "
          "best cut ARI |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    totals: dict[str, list[float]] = {}
    two = [
        (3, (3, 4), 1),
        (4, (3, 5), 1),
        (5, (3, 5), 2),
        (6, (3, 6), 2),
        (8, (3, 6), 3),
        (4, (4, 8), 2),
        (6, (4, 7), 1),
    ]
    three = [(3, (3, 3), 1), (4, (4, 6), 0), (4, (4, 6), 2), (6, (4, 6), 1), (8, (4, 6), 2)]
    for supers, designs in ((0, two), (2, three)):
        world = "three scales" if supers else "two scales"
        for families, per, odd in designs:
            hit, prim, best, cut = 0, [], [], []
            for noise in (0.7, 1.0, 1.4):
                for seed in range(args.seeds):
                    x, truth = smooth(np.random.default_rng(seed), families, per, odd, noise, supers)
                    res = analyze(np.corrcoef(x, rowvar=False), find_failed=False)
                    aris = [adjusted_rand_score(truth, level.groups) for level in res.levels]
                    hit += max(aris, default=0.0) >= 0.9
                    prim.append(adjusted_rand_score(truth, res.groups))
                    best.append(max(aris, default=0.0))
                    m = x.shape[1]
                    cut.append(max(adjusted_rand_score(truth, fcluster(res.linkage, k, "maxclust"))
                                   for k in range(2, m // 2 + 1)))  # fmt: skip
            runs = 3 * args.seeds
            for key, values in (("primary", prim), ("best", best), ("cut", cut), ("hit", [hit / runs] * runs)):
                totals.setdefault(f"{world}/{key}", []).extend(values)
            print(
                f"| {world} | {families} x {per[0]}-{per[1]} (+{odd}) | {runs} | {hit} | {np.mean(prim):.2f} | "
                f"{np.mean(best):.2f} | {np.mean(cut):.2f} |",
                flush=True,
            )
    for world in ("two scales", "three scales"):
        t = {k.split("/")[1]: float(np.mean(v)) for k, v in totals.items() if k.startswith(world)}
        print(f"| {world}, all | | | {t['hit']:.0%} | {t['primary']:.3f} | {t['best']:.3f} | {t['cut']:.3f} |")

    print("\n## Real data with known families\n")
    found_enron = enron_logits()
    if found_enron is None:
        print(f"(skipped: {DATA / 'enron'} is absent)")
    else:
        logits, names = found_enron
        families = np.array(["ABCD".index(name[0]) for name in names])
        res = analyze(np.corrcoef(logits, rowvar=False), find_failed=False)
        shown = ", ".join(f"{level.n_groups} (ARI {adjusted_rand_score(families, level.groups):.2f})"
                          for level in res.levels)  # fmt: skip
        cuts = {k: adjusted_rand_score(families, fcluster(res.linkage, k, "maxclust")) for k in range(2, 16)}
        k = max(cuts, key=cuts.__getitem__)
        print(
            f"Enron, {len(names)} labels in 4 families: levels {shown}; primary {res.n_groups} groups "
            f"(ARI {adjusted_rand_score(families, res.groups):.2f}); the best cut of the tree, {k} groups, "
            f"ARI {cuts[k]:.2f}."
        )
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
