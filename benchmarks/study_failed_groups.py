"""How well the failed-group search recovers planted failed groups, and what each of its two candidate sources adds.

Run: ``python benchmarks/study_failed_groups.py`` (``--seeds 2`` for a quick run; about 1 min with the default 4;
``--variants default`` runs the default search alone, e.g. on another version of the package).
The matrices come from ``planted_failed_groups`` in ``bench_structure.py`` beside it.

The search (:func:`lightning_classim.analyze`, ``find_failed=True``) keeps the pairs of classes in different groups
whose residual (similarity minus the mean of their two groups) stands out from the noise, and takes as candidates the
connected components of that graph and the fuzzy clusters of fuzzy c-means on its rows. Besides the default, this
study runs each source alone: "components only" (no fuzzy c-means: ``FCM_CLUSTERS = ()``) and "fuzzy c-means only"
(no components). The variants set module attributes of :mod:`lightning_classim.structure._failed` (package
internals: this is a study, not an API).

Matrices: sub-groups of ``per`` classes (the correlation of a shared factor per sub-group plus noise), with ``failed``
planted failed groups of ``size`` classes, one from each of ``size`` different sub-groups, sharing an extra factor of
weight ``a`` (the tests' generator; ``a = 1.5`` there); with ``share``, each set reuses ``share`` classes of the one
before (a chain of overlapping failed groups). Each is analysed with ``n_groups`` = the number of sub-groups. A
reported failed group counts as *found* when it has exactly the members of a planted set, as *part* when its members
all belong to one planted set or two overlapping ones (a subset, or two sets' shared classes), and as *other* else.
At most 10 failed groups are reported per analysis, so with 12 or 16 planted at most 10 can be found.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from bench_structure import planted_failed_groups

import lightning_classim.structure._failed as analysis_module
from lightning_classim import analyze


def _no_components(graph: Any, directed: bool = False) -> tuple[int, np.ndarray]:
    return 0, np.zeros(graph.shape[0], dtype=np.intp)


VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "components only": {"FCM_CLUSTERS": ()},
    "fuzzy c-means only": {"connected_components": _no_components},
}

#: sub-groups, classes per sub-group, planted failed groups, weight of their factor, classes per failed group, shared
SCENARIOS: list[tuple[int, int, int, float, int, int]] = [
    (100, 10, 0, 1.5, 6, 0),
    (100, 10, 1, 1.5, 6, 0),
    (100, 10, 4, 1.5, 6, 0),
    (100, 10, 8, 1.5, 6, 0),
    (100, 10, 12, 1.5, 6, 0),
    (100, 10, 16, 1.5, 6, 0),
    (100, 10, 8, 1.35, 6, 0),
    (100, 10, 4, 1.5, 4, 0),
    (100, 10, 8, 1.5, 3, 0),
    (100, 10, 4, 1.5, 10, 0),
    (48, 12, 8, 1.5, 6, 0),
    (30, 10, 3, 1.5, 6, 0),
    (200, 10, 8, 1.5, 6, 0),
    (200, 10, 16, 1.5, 6, 0),
    (400, 10, 8, 1.5, 6, 0),
    (100, 10, 4, 1.5, 6, 1),
    (100, 10, 8, 1.5, 6, 1),
    (100, 10, 4, 1.5, 8, 2),
]


def score(found: list[tuple[int, ...]], wanted: list[tuple[int, ...]]) -> tuple[int, int, int]:
    """Exact recoveries, parts of planted sets, and other reported groups."""
    planted = [set(w) for w in wanted]
    unions = planted + [a | b for i, a in enumerate(planted) for b in planted[i + 1 :] if a & b]
    exact = len(set(found) & set(wanted))
    part = sum(1 for f in found if f not in wanted and any(set(f) <= u for u in unions))
    return exact, part, len(found) - exact - part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    names = args.variants
    touched = {key for v in names for key in VARIANTS[v]}
    defaults = {key: getattr(analysis_module, key) for key in touched}
    totals = {v: [0, 0, 0, 0, 0.0] for v in names}  # found, planted (findable), part, other, seconds
    print(
        "| m | sub-groups | planted (weight, size, shared) | "
        + " | ".join(f"{v}: found / part / other" for v in names)
        + " |"
    )
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for subs, per, failed, a, size, share in SCENARIOS:
        row = {v: [0, 0, 0, 0] for v in names}
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 * seed + failed + 100 * share)
            sim, wanted = planted_failed_groups(rng, subs, per, failed, a, size, share=share)
            for v in names:
                for key, value in defaults.items():
                    setattr(analysis_module, key, VARIANTS[v].get(key, value))
                start = time.perf_counter()
                found = [f.members for f in analyze(sim, n_groups=subs).failed_groups]
                totals[v][4] += time.perf_counter() - start
                exact, part, other = score(found, wanted)
                for i, c in enumerate((exact, min(len(wanted), 10), part, other)):
                    row[v][i] += c
                    totals[v][i] += c
        for key, value in defaults.items():
            setattr(analysis_module, key, value)
        cells = " | ".join(f"{r[0]} of {r[1]} / {r[2]} / {r[3]}" for r in (row[v] for v in names))
        print(f"| {subs * per} | {subs} | {failed} x {args.seeds} seeds ({a}, {size}, {share}) | {cells} |", flush=True)
    cells = " | ".join(f"**{t[0]} of {t[1]} / {t[2]} / {t[3]}** ({t[4]:.1f} s)" for t in (totals[v] for v in names))
    print(f"| all | | | {cells} |")


if __name__ == "__main__":
    main()
