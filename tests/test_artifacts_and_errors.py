import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_classim import ClassSimilarityCallback, analyze, render_heatmap
from lightning_classim.artifacts import list_snapshots, load_snapshot, write_snapshot
from lightning_classim.datasets import read_mulan
from lightning_classim.demo import DemoClassifier, demo_data, hierarchical_data, loaders


@pytest.fixture
def snapshot(tmp_path):
    sim = np.corrcoef(np.random.default_rng(0).standard_normal((5, 40)))
    res = analyze(sim, class_names=list("abcde"))
    folder = write_snapshot(tmp_path, 3, 120, res, render_heatmap(sim, res.order, res.groups), extra={"k": 1})
    return folder, res


def test_snapshot_round_trip(snapshot, tmp_path):
    folder, res = snapshot
    assert folder.name == "epoch=0003-step=000120"
    assert list_snapshots(tmp_path) == [folder]
    snap = load_snapshot(folder)
    back = snap.result
    np.testing.assert_array_equal(back.similarity, res.similarity)
    np.testing.assert_array_equal(back.order, res.order)
    np.testing.assert_array_equal(back.groups, res.groups)
    np.testing.assert_array_equal(back.linkage, res.linkage)
    assert back.class_names == tuple("abcde") and (snap.epoch, snap.step) == (3, 120)
    assert snap.extra == {"k": 1} and snap.metrics["n_groups"] == res.n_groups
    # one shape: the result read back is the result written, summaries, silhouettes and notes included
    assert back.to_dict() == res.to_dict() and back.summary == res.summary and back.silhouettes == res.silhouettes
    assert not list(folder.glob("*.tmp"))


def test_missing_and_corrupt_snapshot_files(snapshot):
    folder, _ = snapshot
    (folder / "order.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"order.npy"):
        load_snapshot(folder)
    np.save(folder / "order.npy", np.arange(4))
    with pytest.raises(ValueError, match=r"Corrupt snapshot in .*: .*similarity \(5, 5\), order \(4,\)"):
        load_snapshot(folder)
    (folder / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"Corrupt snapshot in .*Expecting property name"):
        load_snapshot(folder)


def test_mulan_without_the_xml_labels(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.xml").write_text('<labels><label name="zzz"></label></labels>')
    (folder / "toy-train.arff").write_text("@attribute f numeric\n@data\n1\n")
    with pytest.raises(ValueError, match=r"None of the labels named in .*toy.xml is an attribute of .*toy-train.arff"):
        read_mulan(folder)


def test_hooked_module_without_a_tensor_output(tmp_path):
    class DictHead(nn.Module):
        def __init__(self, fc: nn.Module) -> None:
            super().__init__()
            self.fc = fc

        def forward(self, x):
            return {"features": self.fc(x)}

    class Net(DemoClassifier):
        def __init__(self):
            super().__init__(in_dim=16, num_classes=12, hidden=32)
            self.head = DictHead(self.fc)

        def forward(self, x):
            return self.head(self.body(x))["features"]

    _, val, _, _ = loaders(n_per_class=10, superclasses=3, subclasses=4, dim=16)
    cb = ClassSimilarityCallback(12, module="head", save_dir=tmp_path)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"module='head'\) expected the module's output to be a tensor of scores"):
        trainer.validate(Net(), val, verbose=False)
    cb = ClassSimilarityCallback(12, module="head", output_key="features", save_dir=tmp_path / "ok")
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False)
    trainer.validate(Net(), val, verbose=False)
    assert len(list_snapshots(tmp_path / "ok")) == 1


def test_demo_data_bounds():
    x, y, names, parents = hierarchical_data(n_per_class=3, superclasses=2, subclasses=3, dim=4)
    assert x.shape == (18, 4) and y.shape == (18,) and names[0] == "vehicle/car" and parents[3] == "animal"
    assert torch.bincount(y).tolist() == [3] * 6
    with pytest.raises(ValueError, match=r"1..8 superclasses and 1..6 subclasses, but got 9 and 6"):
        hierarchical_data(superclasses=9)
    with pytest.raises(
        ValueError, match=r"`dim` of at least 74 \(one orthonormal direction .*\), but got 64\. Pass `dim=74`"
    ):
        demo_data(dim=64)
    # the planted structure, by hand: the failed group's classes share a direction across superclasses, the split
    # group's subclasses another; without it (planted=0) classes of different superclasses are orthogonal
    for planted, failed_dot in ((2.5, 2.5**2), (0.0, 0.0)):
        x, y, names, _ = demo_data(n_per_class=1, noise=0.0, planted=planted)
        proto = torch.stack([x[y == i][0] for i in range(len(names))]).double() / 128**0.5  # unit directions
        van, rabbit = names.index("vehicle/road/van"), names.index("animal/pet/rabbit")
        tram, tower = names.index("vehicle/rail/tram"), names.index("building/landmark/tower")
        assert float(proto[van] @ proto[rabbit]) == pytest.approx(failed_dot, abs=1e-4)
        assert float(proto[tram] @ proto[tower]) == pytest.approx(failed_dot, abs=1e-4)
        sofa, couch = names.index("furniture/seat/sofa"), names.index("furniture/seat/couch")
        assert torch.equal(proto[sofa], proto[couch])
