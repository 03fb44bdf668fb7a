import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.cluster.hierarchy import fcluster
from sklearn.metrics import adjusted_rand_score

from lightning_classim.artifacts import list_snapshots, load_snapshot
from lightning_classim.datasets import read_mulan

ROOT = Path(__file__).resolve().parents[1]
MULAN = ROOT.parent / "shared" / "data" / "mulan"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_read_mulan_sparse_and_dense_by_hand(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.xml").write_text(
        '<?xml version="1.0"?><labels xmlns="http://mulan.sourceforge.net/labels">'
        '<label name="tag a"></label><label name="b"></label></labels>'
    )
    header = (
        "@relation toy\n@attribute f0 numeric\n@attribute 'tag a' {0,1}\n"
        "@attribute f1 numeric\n@attribute b {0,1}\n@data\n"
    )
    (folder / "toy-train.arff").write_text(header + "{0 1.5,1 1}\n{2 2,3 1}\n{}\n")
    (folder / "toy-test.arff").write_text(header + "% a comment\n0.5,0,3,1\n")
    train = read_mulan(folder)
    assert train.label_names == ("tag a", "b") and train.feature_names == ("f0", "f1")
    np.testing.assert_array_equal(train.x, [[1.5, 0], [0, 2], [0, 0]])
    np.testing.assert_array_equal(train.y, [[1, 0], [0, 1], [0, 0]])
    test = read_mulan(folder, "test")
    np.testing.assert_array_equal(test.x, [[0.5, 3]])
    np.testing.assert_array_equal(test.y, [[0, 1]])
    with pytest.raises(FileNotFoundError, match=r"toy-valid.arff, but it does not exist"):
        read_mulan(folder, "valid")
    (folder / "toy-bad.arff").write_text(header + "{0 x}\n")
    with pytest.raises(ValueError, match=r"Cannot parse data row at .*toy-bad.arff:7"):
        read_mulan(folder, "bad")


@pytest.mark.skipif(not (MULAN / "enron").exists(), reason="Mulan data (../shared/data/mulan) is not on this machine")
def test_read_real_mulan_sets():
    enron = read_mulan(MULAN / "enron")
    assert enron.x.shape == (1123, 1001) and enron.y.shape == (1123, 53)
    assert enron.y.sum(1).mean() == pytest.approx(3.4, abs=0.05)  # labels per sample, as the data's README says
    assert {n.split(".")[0] for n in enron.label_names} == {"A", "B", "C", "D"}
    delicious = read_mulan(MULAN / "delicious", "test")
    assert delicious.x.shape == (3185, 500) and delicious.y.shape == (3185, 983)


@pytest.mark.slow
@pytest.mark.skipif(not (MULAN / "enron").exists(), reason="Mulan data (../shared/data/mulan) is not on this machine")
def test_multilabel_example_on_enron(tmp_path):
    out = load_example("multilabel_mulan").main(
        ["--data", str(MULAN / "enron"), "--epochs", "2", "--out", str(tmp_path)]
    )
    snaps = list_snapshots(out)
    assert len(snaps) == 2
    snap = load_snapshot(snaps[-1])
    assert snap.result.similarity.shape == (53, 53)
    assert "taxonomy_ari" in snap.metrics


@pytest.mark.slow
def test_plain_lightning_example(tmp_path):
    load_example("plain_lightning").main(out=str(tmp_path), epochs=1)
    assert len(list(tmp_path.rglob("heatmap.png"))) == 1


@pytest.mark.slow
def test_classim_demo_shows_the_planted_structure_and_the_readme_says_what_it_measured(tmp_path):
    # the demo as a user runs it (default seed, 12 epochs): the structure forms (blurred first epoch), the last
    # epoch's coarse level is the superclasses and its fine level the subclasses with the failed group's three classes
    # each alone; the planted near duplicate, failed group and split group are listed; references from sklearn and
    # from the names on the files the run wrote
    picture = tmp_path / "structure.png"
    proc = subprocess.run(
        ["classim", "demo", "--out", str(tmp_path / "run"), "--no-progress", "--picture", str(picture)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"tensorboard --logdir {tmp_path / 'run'} --samples_per_plugin images=1000" in proc.stdout
    folders = sorted((p.parent for p in (tmp_path / "run").rglob("summary.json")), key=lambda p: p.name)
    assert len(folders) == 12
    names = json.loads((folders[-1] / "class_names.json").read_text())
    supers = [n.split("/")[0] for n in names]
    subs = [n.rsplit("/", 1)[0] for n in names]
    failed = {"vehicle/road/van", "animal/pet/rabbit", "instrument/string/cello"}
    subs_apart = [n if n in failed else sub for n, sub in zip(names, subs)]
    first = json.loads((folders[0] / "summary.json").read_text())
    last = json.loads((folders[-1] / "summary.json").read_text())
    first_groups = fcluster(np.load(folders[0] / "linkage.npy"), 8, "maxclust")
    assert adjusted_rand_score(supers, first_groups) < 0.3  # blurred
    assert first["metrics"]["taxonomy_ari"] == pytest.approx(adjusted_rand_score(supers, first_groups))
    coarse, fine = last["levels"]
    assert (coarse["n_groups"], fine["n_groups"]) == (8, 19)
    assert adjusted_rand_score(supers, coarse["groups"]) == 1.0
    assert adjusted_rand_score(subs_apart, fine["groups"]) == 1.0
    assert adjusted_rand_score(subs, fine["groups"]) >= 0.9
    assert {(p["kind"], p["a"], p["b"]) for p in last["pairs"]} >= {
        ("near_duplicate", "furniture/seat/sofa", "furniture/seat/couch")
    }
    assert [set(f["names"]) for f in last["failed_groups"]] == [failed]
    (split,) = last["split_groups"]
    sides = sorted(" ".join(sorted({n.rsplit("/", 1)[0] for n in part})) for part in split["names"])
    assert sides == ["building/landmark", "vehicle/rail"] and min(map(len, split["names"])) >= 2
    assert "pair worth a look (near duplicate): furniture/seat/sofa furniture/seat/couch" in proc.stdout
    assert "failed group (alike, scattered over groups): vehicle/road/van, animal/pet/rabbit" in proc.stdout
    assert "split group (a dense block off the diagonal): " in proc.stdout
    assert Image.open(picture).size[0] > 4 * 200  # four epochs side by side
    # the README's caption states these figures (two decimals), for the picture this command writes
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    caption = readme[readme.index("![The demo's structure forming]") :].split("\n\n")[1]
    aris = [first["metrics"]["taxonomy_ari"], last["metrics"]["taxonomy_ari"]]
    for value in [*aris, adjusted_rand_score(supers, coarse["groups"]), adjusted_rand_score(subs, fine["groups"])]:
        assert f"{value:.2f}" in caption, (value, caption)


def test_command_line_usage():
    ok = subprocess.run([sys.executable, "-m", "lightning_classim", "demo", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "examples:\n  classim demo --out" in ok.stdout
    assert subprocess.run([sys.executable, "-m", "lightning_classim", "--help"], capture_output=True).returncode == 0
    none = subprocess.run([sys.executable, "-m", "lightning_classim"], capture_output=True, text=True)
    assert none.returncode == 2
    bad = subprocess.run([sys.executable, "-m", "lightning_classim", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr
    epochs = subprocess.run(
        [sys.executable, "-m", "lightning_classim", "demo", "--epochs", "0"], capture_output=True, text=True
    )
    assert epochs.returncode == 2 and "--epochs must be at least 1, got 0" in epochs.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    not (MULAN / "delicious").exists(), reason="Mulan data (../shared/data/mulan) is not on this machine"
)
def test_delicious_example_scores_next_to_cooccurrence(tmp_path):
    data = MULAN / "delicious"
    out = load_example("multilabel_mulan").main(["--data", str(data), "--epochs", "1", "--out", str(tmp_path)])
    test = read_mulan(data, "test")
    y = test.y.astype(np.float64)
    c = y.T @ y
    d = np.diag(c)
    union = d[:, None] + d[None, :] - c
    iou = np.divide(c, union, out=np.zeros_like(c), where=union > 0)
    np.fill_diagonal(iou, 1.0)
    cooc = load_snapshot(list_snapshots(out / "sources" / "cooccurrence")[-1]).result
    np.testing.assert_allclose(cooc.similarity, iou, atol=1e-6)
    assert load_snapshot(list_snapshots(out)[-1]).result.similarity.shape == (983, 983)
    assert (tmp_path / "delicious" / "side_by_side.png").exists()
