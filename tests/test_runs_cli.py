import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import assert_heatmap_inside
from PIL import Image
from scipy.cluster.hierarchy import cophenet, fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score, silhouette_score

from lightning_classim import ClassSimilarityCallback, analyze
from lightning_classim.artifacts import Snapshot, list_snapshots, load_snapshot, write_run_info, write_snapshot
from lightning_classim.cli import main
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.report import group_changes
from lightning_classim.runs import RunError, load_run, reference_order

M = 12


def train_run(root: Path, seed: int, hidden: int = 32, classes: tuple[int, int] = (3, 4), epochs: int = 3, **cb):
    pl.seed_everything(seed)
    train, val, names, _ = loaders(
        n_per_class=60, seed=0, batch_size=64, superclasses=classes[0], subclasses=classes[1], dim=16
    )
    callback = ClassSimilarityCallback(len(names), class_names=names, save_dir=root / "classim", **cb)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(DemoClassifier(in_dim=16, num_classes=len(names), hidden=hidden), train, val)
    return root / "classim"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "a": train_run(root / "a", seed=1),
        "b": train_run(root / "b", seed=2),
        "wide": train_run(root / "wide", seed=1, hidden=96),  # a different model
        "six": train_run(root / "six", seed=1, classes=(2, 3)),  # 6 classes
    }


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_classim", *args], capture_output=True, text=True)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ compare


@pytest.mark.slow
def test_compare_run_with_itself_agrees_fully(runs, tmp_path):
    out = tmp_path / "self.png"
    proc = run_cli("compare", str(runs["a"]), str(runs["a"]), "--json", "--png", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    c = report["comparisons"][0]
    assert c["matrix_corr"] == pytest.approx(1.0)
    assert c["group_ari"] == 1.0 and c["cophenetic_corr"] == pytest.approx(1.0)
    assert c["neighbour_overlap_mean"] == 1.0
    # and not 1.0 whatever the runs: the same command on two seeds gives numpy's correlation of their matrices
    other = json.loads(run_cli("compare", str(runs["a"]), str(runs["b"]), "--json").stdout)["comparisons"][0]
    a, b = (load_snapshot(list_snapshots(runs[k])[-1]).result.similarity for k in ("a", "b"))
    upper = np.triu_indices(a.shape[0], 1)
    assert other["matrix_corr"] == pytest.approx(np.corrcoef(a[upper], b[upper])[0, 1], abs=1e-6)
    assert other["matrix_corr"] < 0.999 and other["neighbour_overlap_mean"] < 1.0


@pytest.mark.slow
def test_compare_two_seeds_and_another_model_against_references(runs, tmp_path):
    before = tree_hashes(runs["a"].parent.parent)
    png = tmp_path / "cmp.png"
    code = main(["compare", str(runs["a"]), str(runs["b"]), str(runs["wide"]), "--png", str(png), "--json"])
    assert code == 0
    assert tree_hashes(runs["a"].parent.parent) == before  # nothing read is modified
    proc = run_cli("compare", str(runs["a"]), str(runs["b"]), str(runs["wide"]), "--json", "--png", str(png))
    report = json.loads(proc.stdout)
    a, b = (load_snapshot(list_snapshots(runs[k])[-1]).result for k in ("a", "b"))
    c = report["comparisons"][0]
    off = lambda s: squareform(s.astype(np.float64) - np.eye(M), checks=False)  # noqa: E731
    assert c["matrix_corr"] == pytest.approx(np.corrcoef(off(a.similarity), off(b.similarity))[0, 1])
    assert c["group_ari"] == pytest.approx(adjusted_rand_score(a.groups, b.groups))
    assert c["cophenetic_corr"] == pytest.approx(np.corrcoef(cophenet(a.linkage), cophenet(b.linkage))[0, 1])
    assert len(report["comparisons"]) == 2 and report["comparisons"][1]["run"].endswith("wide/classim")
    worst = c["most_changed_neighbours"][0]
    assert len(worst["neighbours_first"]) == 5 and 0 <= worst["overlap"] <= 1
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] > 2 * img.size[1]  # three panels side by side
    table = run_cli("compare", str(runs["a"]), str(runs["b"]), "--png", str(png))
    assert table.returncode == 0 and "matrix corr" in table.stdout and "nearest neighbours differ most" in table.stdout


@pytest.mark.slow
def test_compare_at_an_epoch(runs, tmp_path):
    report = json.loads(run_cli("compare", str(runs["a"]), str(runs["b"]), "--epoch", "1", "--json",
                                "--png", str(tmp_path / "x.png")).stdout)  # fmt: skip
    assert report["first"]["epoch"] == 1 and report["comparisons"][0]["epoch"] == 1


# ------------------------------------------------------------------------------------------------ report


@pytest.mark.slow
def test_report_files_exist_and_decode(runs, tmp_path):
    before = tree_hashes(runs["a"])
    proc = run_cli("report", str(runs["a"].parent), "--out", str(tmp_path / "rep"))  # the folder above the run
    assert proc.returncode == 0, proc.stderr
    assert f"report written to {tmp_path / 'rep'}" in proc.stdout
    assert tree_hashes(runs["a"]) == before
    rep = tmp_path / "rep"
    for name in ("report.md", "metrics.png", "heatmaps.png", "evolution.gif", "changes.json", "report.json"):
        assert (rep / name).stat().st_size > 0, name
    assert Image.open(rep / "metrics.png").format == "PNG"
    grid = Image.open(rep / "heatmaps.png")
    assert grid.format == "PNG"
    gif = Image.open(rep / "evolution.gif")
    assert gif.format == "GIF" and gif.n_frames == 3
    report = json.loads((rep / "report.json").read_text())
    assert report["epochs"] == [0, 1, 2] and len(report["changes"]) == 2
    md = (rep / "report.md").read_text()
    assert "## Classes that changed group" in md and "## Groups at epoch 2" in md
    # the silhouette curves: each point is sklearn's mean silhouette of the scipy cut of that epoch's matrix
    assert Image.open(rep / "silhouettes.png").format == "PNG" and "## Mean silhouette over the number of groups" in md
    assert [c["epoch"] for c in report["silhouettes"]] == [0, 1, 2]
    for curve, folder in zip(report["silhouettes"], list_snapshots(runs["a"])):
        sim = load_snapshot(folder).result.similarity.astype(np.float64)
        dist = np.maximum(1 - sim, 0)
        np.fill_diagonal(dist, 0)
        z = linkage(squareform(dist, checks=False), "complete")
        assert sorted(int(k) for k in curve if k != "epoch") == list(range(2, M))
        for k in (2, 3, 6):
            labels = fcluster(z, k, "maxclust")
            if len(set(labels)) == k:
                assert curve[str(k)] == pytest.approx(silhouette_score(dist, labels, metric="precomputed"), abs=1e-5)


def test_report_without_automatic_choice_has_no_silhouette_curve(tmp_path):
    rng = np.random.default_rng(0)
    sim = np.corrcoef(rng.standard_normal((8, 40)))
    for epoch in (0, 1):
        write_snapshot(tmp_path / "run", epoch, epoch, analyze(sim, n_groups=3, find_failed=False), None)
    write_run_info(tmp_path / "run", {"num_classes": 8})
    proc = run_cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "rep" / "silhouettes.png").exists()
    assert "silhouette" not in (tmp_path / "rep" / "report.md").read_text()
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["silhouettes"] == []


def test_group_changes_by_hand(tmp_path):
    sim = np.eye(6)
    names = list("abcdef")

    def snap(groups):
        res = analyze(sim, n_groups=1, class_names=names, find_failed=False)
        object.__setattr__(res, "groups", np.asarray(groups))  # not a result loading accepts: kept in memory
        return Snapshot(tmp_path, 0, 0, res, {})

    before = snap([0, 0, 0, 1, 1, 1])
    after = snap([1, 1, 0, 0, 0, 0])  # renumbered: group 1 is the old 0, and class 2 moved to the old group 1
    moved = group_changes(before, after)
    assert [m["name"] for m in moved] == ["c"]
    assert moved[0]["from_group"] == 0 and moved[0]["to_group"] == 0


# ------------------------------------------------------------------------------------------------ export


def parse_newick(text: str) -> tuple[list[str], list[float]]:
    """A small Newick parser: leaf names and branch lengths (quoted names with '' escapes)."""
    text = text.strip()
    assert text.endswith(";")
    leaves, lengths, i, expect_name = [], [], 0, True
    while i < len(text) - 1:
        ch = text[i]
        if ch == "(":
            expect_name = True
            i += 1
        elif ch in ",":
            expect_name = True
            i += 1
        elif ch == ")":
            expect_name = False
            i += 1
        elif ch == ":":
            match = re.match(r":([-+0-9.eE]+)", text[i:])
            lengths.append(float(match.group(1)))
            i += len(match.group(0))
        elif ch == "'":
            j, name = i + 1, ""
            while True:
                if text[j] == "'" and text[j + 1 : j + 2] == "'":
                    name, j = name + "'", j + 2
                elif text[j] == "'":
                    break
                else:
                    name, j = name + text[j], j + 1
            leaves.append(name)
            i = j + 1
        else:
            match = re.match(r"[^():,;']+", text[i:])
            if expect_name:
                leaves.append(match.group(0))
            i += len(match.group(0))
    return leaves, lengths


@pytest.mark.slow
def test_export_json_and_newick_parse_back_with_all_names(runs, tmp_path):
    names = list(load_run(runs["a"]).snapshots[-1].result.class_names)
    out = tmp_path / "tree.json"
    assert main(["export", str(runs["a"]), "--format", "json", "--out", str(out)]) == 0
    tree = json.loads(out.read_text())
    assert tree["format"] == "lightning_classim.tree/1" and tree["num_classes"] == M
    nodes = {n["id"]: n for n in tree["nodes"]}
    leaves, stack, seen = [], [tree["root"]], set()
    while stack:
        node = nodes[stack.pop()]
        assert node["id"] not in seen
        seen.add(node["id"])
        if "children" in node:
            assert all(nodes[c]["height"] <= node["height"] for c in node["children"])
            stack.extend(node["children"])
        else:
            leaves.append(node["name"])
    assert sorted(leaves) == sorted(names) and len(seen) == 2 * M - 1
    proc = run_cli("export", str(runs["a"]), "--format", "newick")
    assert proc.returncode == 0
    leaves, lengths = parse_newick(proc.stdout)
    assert sorted(leaves) == sorted(names) and len(lengths) == 2 * M - 2 and min(lengths) >= 0


def test_export_of_a_deep_tree_with_odd_names(tmp_path):
    m = 3000
    idx = np.arange(m)
    sim = np.exp(-np.abs(idx[:, None] - idx[None, :]) / 3.0)
    names = [f"class {i}, 'x'" if i % 2 else f"c{i}" for i in range(m)]
    res = analyze(sim, method="single", n_groups=1, class_names=names, find_failed=False)
    write_snapshot(tmp_path, 0, 0, res, None)
    write_run_info(tmp_path, {"num_classes": m})
    leaves, _ = parse_newick(run_cli("export", str(tmp_path), "--format", "newick").stdout)
    assert sorted(leaves) == sorted(names)
    tree = json.loads(run_cli("export", str(tmp_path)).stdout)
    assert sorted(n["name"] for n in tree["nodes"] if "name" in n) == sorted(names)


# ------------------------------------------------------------------------------------------------ reference


@pytest.mark.slow
def test_reference_order_from_a_previous_run(runs, tmp_path):
    ref = load_run(runs["a"]).snapshots[-1].result
    new = train_run(tmp_path / "new", seed=5, epochs=1, reference=str(runs["a"]))
    snap = load_snapshot(list_snapshots(new)[0])
    logged = np.asarray(Image.open(snap.path / "heatmap.png").convert("RGB"))
    assert_heatmap_inside(logged, snap.extra["heatmap_box"], snap.result.similarity, ref.order, ref.groups)
    # the run folder's order, for one picture
    np.testing.assert_array_equal(reference_order(str(runs["a"]), M), ref.order)
    # an order array
    order = np.arange(M)[::-1].copy()
    arr = train_run(tmp_path / "arr", seed=5, epochs=1, reference=order)
    snap = load_snapshot(list_snapshots(arr)[0])
    logged = np.asarray(Image.open(snap.path / "heatmap.png").convert("RGB"))
    assert_heatmap_inside(logged, snap.extra["heatmap_box"], snap.result.similarity, order)


@pytest.mark.slow
def test_reference_errors(runs, tmp_path):
    with pytest.raises(ValueError, match=r"`reference` to be a run over 12 classes, but .*six/classim has 6"):
        train_run(tmp_path / "x", seed=0, epochs=1, reference=str(runs["six"]))
    with pytest.raises(ValueError, match=r"`reference` to be a readable run folder, but: .*nowhere does not exist"):
        train_run(tmp_path / "y", seed=0, epochs=1, reference=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"`reference` to be a 1-d integer permutation of range\(12\)"):
        ClassSimilarityCallback(M, reference=[0, 1, 2])


# ------------------------------------------------------------------------------------------------ errors


def test_missing_folder(tmp_path):
    proc = run_cli("report", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"classim report: error: {tmp_path / 'nope'} does not exist."
    assert "Traceback" not in proc.stderr


def test_empty_and_ambiguous_runs(tmp_path):
    write_run_info(tmp_path / "empty", {"num_classes": 3})
    proc = run_cli("export", str(tmp_path / "empty"))
    assert proc.returncode == 1 and "is a run with no analysed epoch yet" in proc.stderr
    (tmp_path / "nothing").mkdir()
    proc = run_cli("report", str(tmp_path / "nothing"))
    assert proc.returncode == 1 and "holds no lightning_classim run" in proc.stderr
    write_run_info(tmp_path / "empty2", {"num_classes": 3})
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 1 and "holds 2 runs; pass one of them" in proc.stderr
    with pytest.raises(RunError, match=r"compare needs two runs or more, but got 1"):
        from lightning_classim.runs import compare_runs

        compare_runs([tmp_path])


@pytest.mark.slow
def test_different_class_counts_and_missing_epoch(runs, tmp_path):
    proc = run_cli("compare", str(runs["a"]), str(runs["six"]), "--png", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and "different numbers of classes" in proc.stderr and "has 12" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("export", str(runs["a"]), "--epoch", "7")
    assert proc.returncode == 1 and "has no snapshot of epoch 7; its epochs are [0, 1, 2]" in proc.stderr


def test_corrupt_files(tmp_path):
    sim = np.eye(4)
    write_snapshot(tmp_path, 0, 0, analyze(sim, n_groups=1, find_failed=False), None)
    write_run_info(tmp_path, {"num_classes": 4})
    folder = list_snapshots(tmp_path)[0]
    (folder / "similarity.npy").write_bytes(b"garbage")
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 1 and "is corrupt or incomplete" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "run.json").write_text("{")
    proc = run_cli("export", str(tmp_path))
    assert proc.returncode == 1 and "run.json is corrupt" in proc.stderr


def test_bad_usage_exits_2(tmp_path):
    assert run_cli().returncode == 2
    bad = run_cli("export", str(tmp_path), "--format", "xml")
    assert bad.returncode == 2 and "invalid choice: 'xml'" in bad.stderr
    one = run_cli("compare", str(tmp_path))
    assert one.returncode == 2 and "compare needs two runs or more" in one.stderr
    nn = run_cli("compare", str(tmp_path), str(tmp_path), "--neighbours", "0")
    assert nn.returncode == 2 and "--neighbours must be at least 1, got 0" in nn.stderr
    for cmd in ("report", "compare", "export", "demo"):
        helped = run_cli(cmd, "--help")
        assert helped.returncode == 0 and "example" in helped.stdout, cmd
