"""The analysis of one epoch as plain functions, without a Trainer: matrices in, what gets written and logged out."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_heatmap_inside
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from lightning_classim import ClassSimilarity, MetricSource, StructureOptions, analyze
from lightning_classim.artifacts import list_snapshots, load_snapshot
from lightning_classim.callback import analyse_epoch, write_epoch
from lightning_classim.render import HeatmapOptions
from lightning_classim.sources import CooccurrenceSource, ScoresSource


def matrices(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((800, 4))
    scores = np.repeat(factors, 3, axis=1) + rng.standard_normal((800, 12))
    other = np.repeat(factors[:, ::-1], 3, axis=1) + 1.5 * rng.standard_normal((800, 12))
    iou = np.clip(np.corrcoef(other, rowvar=False), 0, 1)
    return {"scores": np.corrcoef(scores, rowvar=False), "cooccurrence": iou, "mine": np.corrcoef(other, rowvar=False)}


SOURCES = [
    ScoresSource(),
    CooccurrenceSource(StructureOptions(method="average")),
    MetricSource("mine", ClassSimilarity(12)),
]


def test_analyse_epoch_against_analyze_and_numpy():
    mats = matrices()
    names = [f"c{i}" for i in range(12)]
    out = analyse_epoch(mats, SOURCES, options=StructureOptions(n_groups=4), class_names=names,
                        heatmap=HeatmapOptions(max_pixels=64), undefined={"scores": [3]})  # fmt: skip
    primary = out.results["scores"]
    ref = analyze(mats["scores"], n_groups=4, class_names=names)
    np.testing.assert_array_equal(primary.linkage, ref.linkage)
    assert primary.to_dict() == ref.to_dict()
    # a source with options of its own: average linkage, its own automatic number of groups
    cooc = out.results["cooccurrence"]
    assert cooc.to_dict() == analyze(mats["cooccurrence"], method="average", class_names=names).to_dict()
    # every picture in the primary's order, with the primary's groups; rates on [0, their 99th percentile], magma
    pic = out.pictures["scores"]
    assert pic.box[2] - pic.box[0] == 60  # 12 classes within 64 pixels: 5 pixels each
    assert_heatmap_inside(out.images["scores"], pic.box, mats["scores"], ref.order, ref.groups)
    off = mats["cooccurrence"][np.triu_indices(12, 1)].astype(np.float32)
    assert_heatmap_inside(out.images["cooccurrence"], out.pictures["cooccurrence"].box, mats["cooccurrence"],
                          ref.order, ref.groups, cmap="magma", vmin=0, vmax=float(np.quantile(off, 0.99)))  # fmt: skip
    # scalars: the primary's bare, the others' under their tag, their agreement with the primary from numpy/sklearn
    assert out.scalars["n_groups"] == 4 and out.scalars["constant_classes"] == 1
    assert out.scalars["cooccurrence/n_groups"] == cooc.n_groups
    i, j = np.triu_indices(12, 1)
    corr = np.corrcoef(mats["scores"][i, j], mats["mine"][i, j])[0, 1]
    assert out.scalars["agreement/mine/matrix_corr"] == pytest.approx(corr, abs=1e-6)
    ari = adjusted_rand_score(primary.groups, out.results["mine"].groups)
    assert out.scalars["agreement/mine/group_ari"] == pytest.approx(ari)
    assert [p.path for p in out.panels] == ["", "cooccurrence", "mine"]
    assert out.panels[0].table_rows == primary.group_rows() and out.panels[0].markdown == primary.summary_markdown()


def test_previous_epoch_and_reference_order():
    first = analyse_epoch(matrices(0), SOURCES[:1], options=StructureOptions())
    second = analyse_epoch(matrices(1), SOURCES[:1], options=StructureOptions(), previous=first.results)
    a, b = matrices(0)["scores"], matrices(1)["scores"]
    i, j = np.triu_indices(12, 1)
    assert second.scalars["drift"] == pytest.approx(1 - np.corrcoef(a[i, j], b[i, j])[0, 1], abs=1e-6)
    order = np.arange(12)[::-1].copy()
    drawn = analyse_epoch(matrices(1), SOURCES[:1], options=StructureOptions(), reference=(order, None))
    assert_heatmap_inside(drawn.images["scores"], drawn.pictures["scores"].box, b, order)
    assert drawn.results["scores"].to_dict() == analyze(b).to_dict()  # the analysis is the run's own


def test_write_epoch_writes_one_folder_per_source(tmp_path):
    mats = matrices()
    out = analyse_epoch(mats, SOURCES, options=StructureOptions(), undefined={"scores": [3], "mine": []})
    folders = write_epoch(tmp_path, 4, 40, SOURCES, out, undefined={"scores": [3]})
    assert folders == [
        list_snapshots(tmp_path)[0],
        list_snapshots(tmp_path / "sources" / "cooccurrence")[0],
        list_snapshots(tmp_path / "sources" / "mine")[0],
    ]
    for src, folder in zip(SOURCES, folders):
        snap = load_snapshot(folder)
        assert (snap.epoch, snap.step, snap.extra["source"]) == (4, 40, src.name)
        assert snap.result.to_dict() == out.results[src.name].to_dict()
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "heatmap.png")), out.images[src.name])
    assert json.loads((folders[0] / "summary.json").read_text())["constant_classes"] == [3]


def test_a_failing_source_matrix_names_the_problem():
    bad = {**matrices(), "mine": torch.full((12, 12), 2.0).numpy()}
    with pytest.raises(ValueError, match=r"similarities in \[-1, 1\] .* but it holds 2"):
        analyse_epoch(bad, SOURCES, options=StructureOptions())
