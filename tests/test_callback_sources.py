import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_heatmap_inside
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score, confusion_matrix
from sklearn.metrics.pairwise import cosine_similarity
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_classim import ClassSimilarity, ClassSimilarityCallback, StructureOptions
from lightning_classim.artifacts import list_snapshots, load_snapshot
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.sources import (
    ClassFeatureSimilarity,
    CooccurrenceSource,
    FeaturesSource,
    LabelCooccurrence,
    MetricSource,
    ScoresSource,
    Source,
)

M = 12
ALL = ["scores", "features:body", "welch:body", "weights:fc", "confusion", "cooccurrence"]


def fit(tmp_path, callback, net=None, train=None, val=None, epochs=2, logger=None):
    if train is None:
        train, val, _, _ = loaders(n_per_class=60, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)
    if net is None:
        pl.seed_everything(0)
        net = DemoClassifier(in_dim=16, num_classes=M, hidden=32)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=logger if logger is not None else False, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(net, train, val)
    return net, val


@pytest.mark.slow
def test_all_sources_against_independent_references(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, names, parents = loaders(n_per_class=60, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)
    custom = [  # metric objects as views of one's own; "features:body" is hooked once for both views that read it
        MetricSource("probs", ClassSimilarity(M, scores="probs")),
        MetricSource("body_means", ClassFeatureSimilarity(M, 32), inputs=("features:body", "target")),
    ]
    cb = ClassSimilarityCallback(
        M, class_names=names, sources=[*ALL, *custom], taxonomy=parents, save_dir=tmp_path / "out"
    )
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    net, val = fit(tmp_path, cb, logger=tb)

    net.eval()
    with torch.no_grad():
        xs, ys = zip(*[(x, y) for x, y in val])
        x, y = torch.cat(xs), torch.cat(ys).numpy()
        feats = net.body(x).double().numpy()
        logits = net(x).numpy()
    onehot = np.eye(M)[y]
    views = ["features_body", "welch_body", "weights_fc", "confusion", "cooccurrence", "probs", "body_means"]
    snap = {src: load_snapshot(list_snapshots(tmp_path / "out" / "sources" / src)[-1]).result for src in views}
    primary = load_snapshot(list_snapshots(tmp_path / "out")[-1]).result
    np.testing.assert_allclose(primary.similarity, np.corrcoef(logits, rowvar=False), atol=1e-5)
    means = (onehot.T @ feats) / onehot.sum(0)[:, None]
    np.testing.assert_allclose(snap["features_body"].similarity, cosine_similarity(means), atol=1e-5)
    np.testing.assert_allclose(snap["body_means"].similarity, cosine_similarity(means), atol=1e-5)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(snap["probs"].similarity, np.corrcoef(probs, rowvar=False), atol=1e-5)
    w = net.fc.weight.detach().numpy()
    np.testing.assert_allclose(snap["weights_fc"].similarity, cosine_similarity(w), atol=1e-5)
    conf = confusion_matrix(y, logits.argmax(1), labels=range(M)).astype(float)
    rates = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    ref = (rates + rates.T) / 2
    np.fill_diagonal(ref, 1)
    np.testing.assert_allclose(snap["confusion"].similarity, ref, atol=1e-6)
    np.testing.assert_allclose(snap["cooccurrence"].similarity, np.eye(M), atol=0)  # single-label: no co-occurrence
    welch = load_snapshot(list_snapshots(tmp_path / "out" / "sources" / "welch_body")[-1])
    assert welch.extra["source"] == "welch:body"

    # each source is logged under its own tag, drawn in the primary's order
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for src in snap:
        assert len(acc.Images(f"classim/{src}/heatmap")) == 2, src
        assert f"classim/{src}/n_groups" in tags["scalars"]
        assert f"classim/agreement/{src}/matrix_corr" in tags["scalars"]
        assert f"classim/agreement/{src}/group_ari" in tags["scalars"]
    folder = list_snapshots(tmp_path / "out" / "sources" / "features_body")[-1]
    logged = np.asarray(Image.open(folder / "heatmap.png"))
    box = load_snapshot(folder).extra["heatmap_box"]
    assert_heatmap_inside(logged, box, snap["features_body"].similarity, primary.order, primary.groups)
    text = acc.Tensors("classim/groups/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "Source closest to the taxonomy:" in text
    matrix_corr = acc.Scalars("classim/agreement/features_body/matrix_corr")[-1].value
    off = lambda s: s[~np.eye(M, dtype=bool)]  # noqa: E731
    assert matrix_corr == pytest.approx(
        np.corrcoef(off(primary.similarity), off(snap["features_body"].similarity))[0, 1], abs=1e-5
    )
    # the resumable state has every source's last epoch
    state = cb.state_dict()
    assert set(state["results"]) == {*ALL, "probs", "body_means"}


class MultiLabelNet(pl.LightningModule):
    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, m)

    def training_step(self, batch, batch_idx):
        return nn.functional.binary_cross_entropy_with_logits(self.fc(batch[0]), batch[1].float())

    def validation_step(self, batch, batch_idx):
        return self.fc(batch[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.slow
def test_multilabel_cooccurrence_next_to_scores(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 10)).astype(np.float32)
    y = (x[:, :6] + 0.5 * rng.standard_normal((600, 6)) > 0.5).astype(np.int64)
    y[:, 1] |= y[:, 0]
    data = TensorDataset(torch.tensor(x), torch.tensor(y))
    sources = [
        "scores",
        CooccurrenceSource(StructureOptions(method="average", n_groups=3)),  # this view alone: average, 3 groups
        MetricSource("raw", LabelCooccurrence(6), inputs=("target",)),  # a metric object of one's own
    ]
    cb = ClassSimilarityCallback(6, multilabel=True, sources=sources, save_dir=tmp_path / "o")
    fit(
        tmp_path,
        cb,
        net=MultiLabelNet(10, 6),
        train=DataLoader(data, batch_size=100),
        val=DataLoader(data, batch_size=128),
    )
    c = y.T.astype(float) @ y
    d = np.diag(c)
    iou = c / (d[:, None] + d[None, :] - c)
    np.fill_diagonal(iou, 1)
    snap = load_snapshot(list_snapshots(tmp_path / "o" / "sources" / "cooccurrence")[-1]).result
    np.testing.assert_allclose(snap.similarity, iou, atol=1e-6)
    raw = load_snapshot(list_snapshots(tmp_path / "o" / "sources" / "raw")[-1]).result
    np.testing.assert_allclose(raw.similarity, iou, atol=1e-6)
    # the co-occurrence view's tree is scipy's average linkage of its matrix; the others keep complete linkage
    cond = lambda s: squareform(1.0 - s.astype(np.float64), checks=False)  # noqa: E731
    np.testing.assert_allclose(snap.linkage[:, 2], linkage(cond(iou), "average")[:, 2], atol=1e-6)
    assert not np.allclose(snap.linkage[:, 2], linkage(cond(iou), "complete")[:, 2], atol=1e-3)
    assert adjusted_rand_score(snap.groups, fcluster(linkage(cond(iou), "average"), 3, "maxclust")) == 1.0
    assert len(set(snap.groups)) == 3
    primary = load_snapshot(list_snapshots(tmp_path / "o")[-1]).result
    np.testing.assert_allclose(primary.linkage[:, 2], linkage(cond(primary.similarity), "complete")[:, 2], atol=1e-6)
    info = lambda folder: json.loads((folder / "run.json").read_text())["analysis"]  # noqa: E731
    assert (info(tmp_path / "o")["method"], info(tmp_path / "o")["n_groups"]) == ("complete", None)
    assert info(tmp_path / "o" / "sources" / "cooccurrence")["method"] == "average"
    assert info(tmp_path / "o" / "sources" / "cooccurrence")["n_groups"] == 3
    assert info(tmp_path / "o" / "sources" / "raw")["method"] == "complete"


@pytest.mark.slow
def test_notes_of_a_source_are_warned_once_and_kept_every_epoch(tmp_path):
    # single-label targets never co-occur: the IoU is the identity, every merge ties at distance 1, no cut exists
    cb = ClassSimilarityCallback(M, sources=["scores", "cooccurrence"], save_dir=tmp_path / "o")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, cb, epochs=2)
    said = [str(w.message) for w in caught if "merges tie" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith("ClassSimilarityCallback: at epoch 0, source 'cooccurrence': the automatic choice")
    assert "all 11 merges tie at height 1: a cut gives 1 or 12 groups" in said[0]
    assert "give it options of its own, e.g. `CooccurrenceSource(StructureOptions(method='average'))`" in said[0]
    for folder in list_snapshots(tmp_path / "o" / "sources" / "cooccurrence"):
        notes = load_snapshot(folder).result.notes
        assert len(notes) == 1 and "all 11 merges tie at height 1" in notes[0]
    assert all(load_snapshot(f).result.notes == () for f in list_snapshots(tmp_path / "o"))


def test_bad_sources_at_construction():
    with pytest.raises(ValueError, match=r"one of 'scores', 'confusion', .* but got 'features'"):
        ClassSimilarityCallback(M, sources=["scores", "features"])
    with pytest.raises(ValueError, match=r"but got 'pixels'"):
        ClassSimilarityCallback(M, sources=["pixels"])
    with pytest.raises(ValueError, match=r"but got 'confusion:fc'"):
        ClassSimilarityCallback(M, sources=["confusion:fc"])
    with pytest.raises(ValueError, match=r"distinct names, but got \['scores', 'scores'\]"):
        ClassSimilarityCallback(M, sources=["scores", "scores"])
    average = StructureOptions(method="average")
    with pytest.raises(ValueError, match=r"distinct names, but got \['scores', 'cooccurrence', 'cooccurrence'\]"):
        ClassSimilarityCallback(M, sources=["scores", "cooccurrence", CooccurrenceSource(average)])
    with pytest.raises(ValueError, match=r"distinct names, but got \['features:a.b', 'features:a_b'\]"):
        ClassSimilarityCallback(M, sources=["features:a.b", "features:a_b"])  # both would write features_a_b
    with pytest.raises(ValueError, match=r"`sources` to be a non-empty list of sources, but got 'scores'"):
        ClassSimilarityCallback(M, sources="scores")
    with pytest.raises(ValueError, match=r"or a Source object \(e\.g\. MetricSource\('name', metric\)\), but got 3"):
        ClassSimilarityCallback(M, sources=["scores", 3])
    shared = ClassSimilarity(M, scores="probs")
    with pytest.raises(ValueError, match=r"its own metric object, but got one metric in two sources"):
        ClassSimilarityCallback(M, sources=[MetricSource("a", shared), MetricSource("b", shared)])


def test_bad_source_objects():
    with pytest.raises(
        ValueError, match=r"`metric` of MetricSource\('probs'\) to be a torchmetrics.Metric, but got nd"
    ):
        MetricSource("probs", np.eye(3))  # type: ignore[arg-type]
    for name in ("scores", "features:body", "my view", "cooccurrence", 3):
        with pytest.raises(ValueError, match=r"(a name of your own .* but got|letters, digits, .* but got)"):
            MetricSource(name, ClassSimilarity(M))  # type: ignore[arg-type]
    for inputs in ("scores", (), ("logits",), ("features:",), ("scores", 1)):
        with pytest.raises(ValueError, match=r"`inputs` of MetricSource\('v'\) to be a non-empty sequence of 'sco"):
            MetricSource("v", ClassSimilarity(M), inputs=inputs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`options` of source 'cooccurrence' to be a StructureOptions or None, but"):
        CooccurrenceSource({"method": "average"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`method` to be one of \[.*\], but got 'avg'"):
        CooccurrenceSource(StructureOptions(method="avg"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`statistic` to be one of \['mean', 'welch'\], but got 't'"):
        FeaturesSource("body", statistic="t")  # type: ignore[arg-type]
    src = MetricSource("v", ClassSimilarity(M), inputs=["features:body.0", "target"], options=StructureOptions())
    assert (src.name, src.inputs, src.hooked_modules) == ("v", ("features:body.0", "target"), ("body.0",))
    assert (src.needs_scores, src.needs_target, src.options) == (False, True, StructureOptions())
    with pytest.raises(
        ValueError, match=r"Source 'cooccurrence': Expected argument `n_groups` to be an int in 1\.\.12"
    ):
        ClassSimilarityCallback(M, sources=["scores", CooccurrenceSource(StructureOptions(n_groups=13))])
    with pytest.raises(ValueError, match=r"Expected only one of `n_groups` and `distance_threshold`"):
        ScoresSource(StructureOptions(n_groups=2, distance_threshold=0.5))
    welch = FeaturesSource("body.2", statistic="welch")
    assert (welch.name, welch.tag, welch.hooked_modules) == ("welch:body.2", "welch_body_2", ("body.2",))


def test_a_source_kind_of_ones_own(tmp_path):
    # a new kind of view is one subclass: here, the correlation of the scores' squares (any (m, m) matrix will do)
    class SquaredScores(Source):
        needs_scores = True

        def __init__(self) -> None:
            super().__init__("squared")

        def make_metric(self, ctx):
            return ClassSimilarity(ctx.num_classes)

        def update(self, metric, inputs, ctx):
            metric.update(inputs.scores**2)
            return metric

        def compute(self, metric, ctx):
            return metric.compute()

    cb = ClassSimilarityCallback(M, sources=["scores", SquaredScores()], save_dir=tmp_path / "o")
    net, val = fit(tmp_path, cb, epochs=1)
    with torch.no_grad():
        logits = torch.cat([net(x) for x, _ in val]).double().numpy()
    got = load_snapshot(list_snapshots(tmp_path / "o" / "sources" / "squared")[-1]).result.similarity
    np.testing.assert_allclose(got, np.corrcoef(logits**2, rowvar=False), atol=1e-5)
    assert "classim/squared/n_groups" not in cb.history[-1]  # the scalars carry no prefix in history
    assert "squared/n_groups" in cb.history[-1]


def test_custom_source_errors_in_a_run(tmp_path):
    class NotSquare(ClassSimilarity):
        def compute(self):
            return super().compute()[:, :3]

    cb = ClassSimilarityCallback(M, sources=["scores", MetricSource("cut", NotSquare(M))], save_dir=tmp_path)
    with pytest.raises(ValueError, match=r"metric of MetricSource\('cut'\), NotSquare, to compute a \(12, 12\) "
                                         r"similarity tensor, but got shape \(12, 3\)"):  # fmt: skip
        fit(tmp_path, cb, epochs=1)

    class NotATensor(ClassSimilarity):
        def compute(self):
            return super().compute().numpy()

    cb = ClassSimilarityCallback(M, sources=["scores", MetricSource("np", NotATensor(M))], save_dir=tmp_path)
    with pytest.raises(ValueError, match=r"MetricSource\('np'\), NotATensor, to compute a \(12, 12\) similarity "
                                         r"tensor, but got ndarray"):  # fmt: skip
        fit(tmp_path, cb, epochs=1)
    feats = MetricSource("f", ClassFeatureSimilarity(M, 32), inputs=("features:layer4", "target"))
    with pytest.raises(ValueError, match=r"`sources \('f'\)` to name a submodule of DemoClassifier, but got 'layer4'"):
        fit(tmp_path, ClassSimilarityCallback(M, sources=["scores", feats], save_dir=tmp_path))


def test_missing_layer_and_wrong_weight_rows(tmp_path):
    with pytest.raises(ValueError, match=r"`sources \('features:layer4'\)` to name a submodule of DemoClassifier"):
        fit(tmp_path, ClassSimilarityCallback(M, sources=["scores", "features:layer4"], save_dir=tmp_path))
    with pytest.raises(ValueError, match=r"one row per class \(12\), but got shape \(32, 16\)"):
        fit(tmp_path, ClassSimilarityCallback(M, sources=["weights:body.0"], save_dir=tmp_path))


def test_targets_missing_or_multilabel_for_confusion(tmp_path):
    x = torch.randn(64, 16)
    only_x = DataLoader(TensorDataset(x), batch_size=32)

    class NoTargets(DemoClassifier):
        def training_step(self, batch, batch_idx):
            return self(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            return self(batch[0])

    cb = ClassSimilarityCallback(M, sources=["scores", "cooccurrence"], save_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Sources \['cooccurrence'\] need the targets, but the validation batch "
                                         r"\(list\) has nothing at target_key=1"):  # fmt: skip
        fit(tmp_path, cb, net=NoTargets(in_dim=16, num_classes=M, hidden=8), train=only_x, val=only_x, epochs=1)
    multi = DataLoader(TensorDataset(x, torch.randint(0, 2, (64, M))), batch_size=32)
    cb = ClassSimilarityCallback(M, sources=["scores", "confusion"], save_dir=tmp_path)
    with pytest.raises(ValueError, match=r"'confusion' needs single-label targets .* got shape \(32, 12\)"):
        fit(tmp_path, cb, net=NoTargets(in_dim=16, num_classes=M, hidden=8), train=multi, val=multi, epochs=1)


@pytest.mark.slow
def test_ddp_sources_match_single_process(tmp_path):
    script = Path(__file__).with_name("ddp_validate_script.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    sims = {}
    for n in (1, 2):
        out = tmp_path / f"dev{n}"
        sources = "scores,features:body,welch:body,cooccurrence,probs,body_means"
        proc = subprocess.run([sys.executable, str(script), str(out), str(n), sources],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        sims[n] = {
            tag: load_snapshot(list_snapshots(out / "classim" / "sources" / tag)[0]).result.similarity
            for tag in ("features_body", "welch_body", "cooccurrence", "probs", "body_means")
        }
    for tag in sims[1]:
        np.testing.assert_allclose(sims[2][tag], sims[1][tag], atol=1e-5, err_msg=tag)
