"""The command line on damaged and hostile runs: one line on stderr and exit 1, never a traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lightning_classim import analyze
from lightning_classim.artifacts import list_snapshots, load_snapshot, write_run_info, write_snapshot
from lightning_classim.runs import RunWarning, load_run


def cli(*args: str, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_classim", *args], capture_output=True, text=True)


def make_run(folder, epochs=2, names=None, m=6):
    rng = np.random.default_rng(0)
    write_run_info(folder, {"num_classes": m})
    for epoch in range(epochs):
        x = rng.standard_normal((200, 3)) @ rng.standard_normal((3, m)) + rng.standard_normal((200, m))
        write_snapshot(folder, epoch, 10 * epoch, analyze(np.corrcoef(x, rowvar=False), class_names=names), None)
    return list_snapshots(folder)


def one_line_error(proc: subprocess.CompletedProcess, command: str, text: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"classim {command}: error:") and text in lines[-1], proc.stderr


DAMAGE = {
    "empty similarity.npy": lambda f: (f / "similarity.npy").write_bytes(b""),
    "order not a permutation": lambda f: np.save(f / "order.npy", np.zeros(6, dtype=np.int64)),
    "linkage of the wrong shape": lambda f: np.save(f / "linkage.npy", np.zeros((2, 4))),
    "linkage with NaN": lambda f: np.save(f / "linkage.npy", np.full((5, 4), np.nan)),
    "negative group": lambda f: np.save(f / "groups.npy", np.array([-1, 0, 0, 1, 1, 1])),
    "huge group": lambda f: np.save(f / "groups.npy", np.array([0, 0, 0, 1, 1, 2**40])),
    "summary holds a list": lambda f: (f / "summary.json").write_text("[1, 2]"),
    "class names hold a dict": lambda f: (f / "class_names.json").write_text('{"a": 1}'),
    "summary nested 100,000 deep": lambda f: (f / "summary.json").write_text("[" * 100_000 + "]" * 100_000),
    "epoch is a list": lambda f: _edit_summary(f, lambda s: {**s, "epoch": [1]}),
    "split group member out of range": lambda f: _edit_summary(
        f, lambda s: {**s, "split_groups": [{"groups": [0, 1], "members": [[0], [99]], "similarity": 0.5}]}
    ),
    "failed group member out of range": lambda f: _edit_summary(
        f, lambda s: {**s, "failed_groups": [{"members": [0, 1, 77], "groups": [0, 1], "similarity": 0.5}]}
    ),
    "pair index 999": lambda f: _edit_summary(
        f,
        lambda s: {
            **s,
            "pairs": [{"kind": "outlier", "a": "0", "b": "1", "i": 999, "j": 1, "score": 5.0, "similarity": 0.5}],
        },
    ),
    "pair index -5": lambda f: _edit_summary(
        f,
        lambda s: {
            **s,
            "pairs": [{"kind": "outlier", "a": "0", "b": "1", "i": 0, "j": -5, "score": 5.0, "similarity": 0.5}],
        },
    ),
    "all-NaN similarity": lambda f: np.save(f / "similarity.npy", np.full((6, 6), np.nan, dtype=np.float32)),
    "similarity outside [-1, 1]": lambda f: np.save(f / "similarity.npy", np.full((6, 6), 3.0, dtype=np.float32)),
    "groups.npy disagrees with summary.json": lambda f: np.save(
        f / "groups.npy", np.roll(np.load(f / "groups.npy"), 1)
    ),
    "non-monotone linkage": lambda f: np.save(f / "linkage.npy", _inverted(np.load(f / "linkage.npy"))),
    "negative tree heights": lambda f: np.save(f / "linkage.npy", np.load(f / "linkage.npy") * [1, 1, -1, 1]),
}


def _edit_summary(folder, change) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps(change(summary)))


def _inverted(z):
    z = z.copy()
    z[-1, 2] = 0.0  # the root below its children: negative Newick branch lengths
    return z


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_only_epoch_is_a_one_line_error(tmp_path, damage):
    (folder,) = make_run(tmp_path / "run", epochs=1)
    DAMAGE[damage](folder)
    for command in ("report", "export"):
        proc = cli(command, str(tmp_path / "run"), *(["--out", str(tmp_path / "rep")] if command == "report" else []))
        one_line_error(proc, command, "holds no readable epoch")
        assert f"warning: skipped {folder}" in proc.stderr


def test_one_corrupt_epoch_is_skipped_and_the_rest_reported(tmp_path):
    folders = make_run(tmp_path / "run", epochs=3)
    (folders[1] / "similarity.npy").write_bytes(b"")  # the usual remnant of a power loss
    with pytest.warns(RunWarning, match=r"skipped .*epoch=0001-step=000010: it is corrupt or incomplete"):
        run = load_run(tmp_path / "run")
    assert [s.epoch for s in run.snapshots] == [0, 2]
    proc = cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0 and "warning: skipped" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["epochs"] == [0, 2]


def test_report_out_naming_a_file(tmp_path):
    make_run(tmp_path / "run", epochs=1)
    (tmp_path / "file.txt").write_text("x")
    one_line_error(cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "file.txt")), "report", "file.txt")


def test_broken_pipe_under_head(tmp_path):
    make_run(tmp_path / "run", epochs=1, m=400)
    cmd = f"{sys.executable} -m lightning_classim export {tmp_path / 'run'} --format json | head -c 20"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert proc.stdout.startswith('{"format"') and "Traceback" not in proc.stderr and "Broken" not in proc.stderr


def test_names_with_bars_and_line_breaks_stay_in_their_cells(tmp_path):
    names = ["a|b", "line\nbreak", "it's", "d", "e", "f"]
    make_run(tmp_path / "run", epochs=2, names=names)
    assert cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")).returncode == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    tables, current = [], []  # every markdown table's rows have as many cells as its header
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert tables and all(row.count(" | ") == t[0].count(" | ") for t in tables for row in t)
    assert "a\\|b" in md and "line break" in md
    newick = cli("export", str(tmp_path / "run"), "--format", "newick").stdout.strip()
    assert "\n" not in newick and "'line break'" in newick and "'it''s'" in newick and "'a|b'" in newick


def test_compare_writes_no_picture_unless_asked(tmp_path):
    make_run(tmp_path / "a", epochs=1)
    make_run(tmp_path / "b", epochs=1)
    proc = subprocess.run([sys.executable, "-m", "lightning_classim", "compare", str(tmp_path / "a"),
                           str(tmp_path / "b")], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and not list(tmp_path.glob("*.png"))
    assert cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--png", str(tmp_path / "c.png")).returncode == 0
    assert (tmp_path / "c.png").exists()


def test_a_snapshot_is_never_overwritten(tmp_path):
    result = analyze(np.eye(4) * 0.5 + 0.5, n_groups=1, find_failed=False)
    first = write_snapshot(tmp_path, 3, 30, result, None)
    second = write_snapshot(tmp_path, 3, 30, result, None)
    assert (first.name, second.name) == ("epoch=0003-step=000030", "epoch=0003-step=000030-v1")
    assert list_snapshots(tmp_path) == [first, second]
    assert load_snapshot(second).result.to_dict() == result.to_dict()


def test_the_demo_without_tensorboard_is_a_one_line_error_naming_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['tensorboard'] = sys.modules['tensorboardX'] = None\n"
        "from lightning_classim.cli import main\n"
        f"sys.exit(main(['demo', '--out', {str(tmp_path / 'demo')!r}, '--epochs', '1']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    one_line_error(proc, "demo", 'the demo logs to TensorBoard, which is not installed. Install it with the '
                   "package's extra: pip install \"lightning_classim[tensorboard]\"")  # fmt: skip
    assert not (tmp_path / "demo").exists()
