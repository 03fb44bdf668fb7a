"""What ``classim demo`` shows over seeds: the levels, and whether each planted finding is listed.

Run: ``python benchmarks/study_demo.py`` (seeds 0 to 7, about 40 s on 2 cores; ``--seeds 0 1`` for fewer). Each
seed trains the demo exactly as ``classim demo --seed S`` does (:func:`lightning_classim.demo.run_demo`, 12 epochs)
and reads the run back from disk (:func:`lightning_classim.demo.demo_figures`).

Columns: the superclass ARI of the tree cut into 8 groups at the first and the last epoch; the last epoch's levels
(``k: superclass ARI / ARI against the 16 subclasses with the failed group's three classes each alone``); whether the
planted near duplicate (``sofa``/``couch``), failed group (``van``, ``rabbit``, ``cello``, exactly) and split group
(a set of ``vehicle/rail`` classes against a set of ``building/landmark`` classes) are listed; and the other failed
and split groups listed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings

import numpy as np
import torch

from lightning_classim._stats import adjusted_rand_index
from lightning_classim.demo import FAILED_GROUP, NEAR_DUPLICATE, SPLIT_GROUP, demo_data, demo_figures, run_demo
from lightning_classim.runs import load_run


def one_seed(seed: int) -> dict[str, object]:
    """The demo's figures for one seed, and what it lists of the planted findings."""
    _, _, names, (_, subs) = demo_data(n_per_class=1)
    apart = np.unique([n if n in FAILED_GROUP else s for n, s in zip(names, subs)], return_inverse=True)[1]
    with tempfile.TemporaryDirectory() as out:
        run_dir = run_demo(out, seed=seed, progress=False)
        figures = demo_figures(run_dir)
        levels = load_run(run_dir).snapshots[-1].result.levels
    sides = [[{n.rsplit("/", 1)[0] for n in part} for part in g] for g in figures["split_groups"]]
    split = sum(1 for a, b in sides if len(a) == len(b) == 1 and a | b == set(SPLIT_GROUP))
    failed = sum(1 for g in figures["failed_groups"] if set(g) == set(FAILED_GROUP))
    return {
        "first": figures["first_taxonomy_ari"],
        "last": figures["last_taxonomy_ari"],
        "levels": [
            (lv["n_groups"], lv["superclass_ari"], adjusted_rand_index(level.groups, apart))
            for lv, level in zip(figures["levels"], levels)
        ],
        "found": (("near_duplicate", *NEAR_DUPLICATE) in figures["pairs"], failed > 0, split > 0),
        "other": (len(figures["failed_groups"]) - failed, len(figures["split_groups"]) - split),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(
        "| seed | superclass ARI, epoch 0 / last | levels of the last epoch (k: superclass ARI / subclass ARI, the "
        "failed group apart) | near duplicate | failed group | split group | other failed / split groups |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    totals = np.zeros(3, dtype=int)
    for seed in args.seeds:
        r = one_seed(seed)
        levels = ", ".join(f"{k}: {sup:.2f} / {apart:.2f}" for k, sup, apart in r["levels"])
        totals += np.array(r["found"], dtype=int)
        cells = " | ".join("yes" if x else "no" for x in r["found"])
        print(f"| {seed} | {r['first']:.2f} / {r['last']:.2f} | {levels} | {cells} | {r['other'][0]} / "
              f"{r['other'][1]} |", flush=True)  # fmt: skip
    n = len(args.seeds)
    print(f"| all | | | {totals[0]} of {n} | {totals[1]} of {n} | {totals[2]} of {n} | |")


if __name__ == "__main__":
    main()
