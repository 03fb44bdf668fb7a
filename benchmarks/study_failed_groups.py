"""What a cheaper failed-group search would lose: planted failed groups found by the default search and by cheaper ones.

Run: ``python benchmarks/study_failed_groups.py`` (``--seeds 2`` for a quick run; about 15 s with the default 4).
The matrices come from ``planted_failed_groups`` in ``bench_structure.py`` beside it.

The failed-group search (:func:`lightning_classim.analyze`, ``find_failed=True``) costs about as much as scipy's
linkage at m = 1000. Its cost is fuzzy c-means with 2 seeded restarts for each number of clusters, in the residual's
dominant 48-dimensional subspace. This study runs, on the same matrices, the default search and three cheaper ones:
1 restart, a 32-dimensional subspace, and both. The variants set the module constants ``_FCM_RESTARTS`` and
``_SKETCH_DIM`` of :mod:`lightning_classim.analysis` (package internals: this is a study, not an API).

Matrices: sub-groups of ``per`` classes (the correlation of a shared factor per sub-group plus noise), with ``failed``
planted failed groups of ``size`` classes, one from each of ``size`` different sub-groups, sharing an extra factor of
weight ``a`` (the tests' generator; ``a = 1.5`` there). Each is analysed with ``n_groups`` = the number of sub-groups.
A planted set counts as found when a reported failed group has exactly its members; any other reported group counts
as a false one. At most 10 failed groups are reported per analysis, so with 12 or 16 planted at most 10 can be found.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_structure import planted_failed_groups

import lightning_classim.analysis as analysis_module
from lightning_classim import analyze

VARIANTS: dict[str, dict[str, int]] = {
    "default (2 restarts, 48 dims)": {},
    "1 restart": {"_FCM_RESTARTS": 1},
    "32 dims": {"_SKETCH_DIM": 32},
    "1 restart, 32 dims": {"_FCM_RESTARTS": 1, "_SKETCH_DIM": 32},
}

#: sub-groups, classes per sub-group, planted failed groups, weight of their factor, classes per failed group
SCENARIOS: list[tuple[int, int, int, float, int]] = [
    (100, 10, 0, 1.5, 6),
    (100, 10, 1, 1.5, 6),
    (100, 10, 4, 1.5, 6),
    (100, 10, 8, 1.5, 6),
    (100, 10, 12, 1.5, 6),
    (100, 10, 16, 1.5, 6),
    (100, 10, 8, 1.35, 6),
    (100, 10, 4, 1.5, 4),
    (100, 10, 8, 1.5, 3),
    (100, 10, 4, 1.5, 10),
    (48, 12, 8, 1.5, 6),
    (30, 10, 3, 1.5, 6),
    (200, 10, 8, 1.5, 6),
    (200, 10, 16, 1.5, 6),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    defaults = {name: getattr(analysis_module, name) for name in ("_FCM_RESTARTS", "_SKETCH_DIM")}
    names = list(VARIANTS)
    totals = {v: [0, 0, 0, 0.0] for v in names}  # found, planted (findable), false, seconds
    print("| m | sub-groups | planted (weight, size) | " + " | ".join(f"{v}: found / false" for v in names) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for subs, per, failed, a, size in SCENARIOS:
        row = {v: [0, 0, 0] for v in names}
        for seed in range(args.seeds):
            sim, wanted = planted_failed_groups(np.random.default_rng(1000 * seed + failed), subs, per, failed, a, size)
            for v in names:
                for name, value in defaults.items():
                    setattr(analysis_module, name, VARIANTS[v].get(name, value))
                start = time.perf_counter()
                found = [f.members for f in analyze(sim, n_groups=subs).failed_groups]
                totals[v][3] += time.perf_counter() - start
                hits = len(set(found) & set(wanted))
                counts = (hits, min(len(wanted), 10), len(found) - hits)
                for i, c in enumerate(counts):
                    row[v][i] += c
                    totals[v][i] += c
        for name, value in defaults.items():
            setattr(analysis_module, name, value)
        cells = " | ".join(f"{r[0]} of {r[1]} / {r[2]}" for r in (row[v] for v in names))
        print(f"| {subs * per} | {subs} | {failed} x {args.seeds} seeds ({a}, {size}) | {cells} |", flush=True)
    cells = " | ".join(f"**{t[0]} of {t[1]} / {t[2]}** ({t[3]:.1f} s)" for t in (totals[v] for v in names))
    print(f"| all | | | {cells} |")


if __name__ == "__main__":
    main()
