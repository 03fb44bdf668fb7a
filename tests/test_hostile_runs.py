"""Run folders as untrusted input, and names that try to break pages: the command line, the explorer in a real
browser, and the TensorBoard tab on a real server (127.0.0.1)."""

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import failed_group_scores
from test_explorer import _free_port, browser_test, driver, load, make_run, severe  # noqa: F401

from lightning_classim import analyze
from lightning_classim.artifacts import list_snapshots, write_run_info, write_snapshot
from lightning_classim.explorer import ExplorerEpoch, explorer_html, write_explorer
from lightning_classim.report import write_report
from lightning_classim.structure import md_escape

HOSTILE = ["<!-- a", "</script><script>window.pwned=1</script>", "<img src=http://127.0.0.1:9/x>", "b & c", "d"]


def hostile_run(folder: Path, epochs: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    m = 10
    names = [HOSTILE[i % len(HOSTILE)] + f" {i}" for i in range(m)]
    write_run_info(folder, {"num_classes": m, "class_names": names})
    for epoch in range(epochs):
        x = rng.standard_normal((300, 3))[:, np.arange(m) % 3] + rng.standard_normal((300, m))
        write_snapshot(folder, epoch, epoch, analyze(np.corrcoef(x, rowvar=False), class_names=names), None)
    return names


def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lightning_classim", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    return proc, time.monotonic() - start


def test_the_page_data_holds_no_angle_bracket_or_ampersand(tmp_path):
    names = hostile_run(tmp_path / "run")
    page = write_explorer(tmp_path / "run").read_text()
    block = re.search(r'<script id="classim-data" type="application/json">(.*?)</script>', page, re.S)[1]
    assert not set("<>&") & set(block)
    assert json.loads(block)["names"] == names  # what the page reads back is the names, unchanged
    assert page.count("<script") == 2 and page.count("</script>") == 2 and "<!--" not in page


def test_names_are_escaped_in_markdown_and_the_report(tmp_path):
    hostile_run(tmp_path / "run")
    assert md_escape("<img src=x>") == "&lt;img src=x&gt;"
    assert md_escape("![a](http://x)") == "\\!\\[a\\]\\(http://x\\)"
    report = (write_report(tmp_path / "run", tmp_path / "rep") / "report.md").read_text()
    assert "<img" not in report and "<!--" not in report and "<script" not in report
    assert "&lt;img src=http://127.0.0.1:9/x&gt;" in report


@browser_test
@pytest.mark.slow
def test_hostile_names_and_paths_leave_every_page_working(tmp_path, driver):  # noqa: F811
    names = hostile_run(tmp_path / "<!--run" / "x")
    for page in (write_explorer(tmp_path / "<!--run" / "x", tmp_path / "a.html"),
                 tmp_path / "b.html"):  # fmt: skip
        if page.name == "b.html":
            result = analyze(np.eye(10) * 0.5 + 0.5, class_names=names)
            page.write_text(explorer_html([ExplorerEpoch(0, 0, result)], title="</title><!--"))
        load(driver, page.as_uri())
        assert driver.execute_script("return classim.names().length") == 10
        assert driver.execute_script("return window.pwned === undefined")
        assert sorted(driver.execute_script("return classim.names()")) == sorted(names)
        assert severe(driver) == []  # no script error and no Content-Security-Policy violation


def _fifo_run(folder: Path) -> None:
    make_run(folder, m=8, epochs=1, taxonomy=False)
    (snap,) = list_snapshots(folder)
    (snap / "similarity.npy").unlink()
    os.mkfifo(snap / "similarity.npy")


def _huge_header_run(folder: Path) -> None:
    make_run(folder, m=8, epochs=1, taxonomy=False)
    (snap,) = list_snapshots(folder)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (99999, 99999), }"
    header += " " * (63 - len(header) % 64) + "\n"
    (snap / "similarity.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_fifo_run, "similarity.npy is not a regular file"),
        (_huge_header_run, "claims a float32 array of shape (99999, 99999)"),
    ],
)
def test_a_fifo_or_an_oversized_header_is_a_quick_one_line_error(tmp_path, damage, says):
    damage(tmp_path / "run")
    for command in ("report", "explore", "export"):
        proc, took = cli(
            command, str(tmp_path / "run"), *(["--out", str(tmp_path / "o")] if command != "export" else [])
        )
        assert took < 60 and proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert says in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith(f"classim {command}: error:")


def test_symlinked_epoch_folders_and_files_are_not_read(tmp_path):
    make_run(tmp_path / "outside", m=8, epochs=1, taxonomy=False)
    make_run(tmp_path / "run", m=8, epochs=1, taxonomy=False)
    (outside,) = list_snapshots(tmp_path / "outside")
    (tmp_path / "run" / "epoch=0005-step=000050").symlink_to(outside, target_is_directory=True)
    assert [p.name for p in list_snapshots(tmp_path / "run")] == ["epoch=0000-step=000000"]
    (inside,) = list_snapshots(tmp_path / "run")
    (inside / "order.npy").unlink()
    (inside / "order.npy").symlink_to(outside / "order.npy")
    proc, _ = cli("export", str(tmp_path / "run"))
    assert proc.returncode == 1 and "order.npy is a symbolic link" in proc.stderr


@contextlib.contextmanager
def tensorboard(logdir: Path, log: Path):
    port = _free_port()
    with open(log, "w") as err:
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                                   "127.0.0.1", "--port", str(port)], stdout=err, stderr=err)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(base + "/data/plugins_listing", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.25)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=20)


def get(url: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


@pytest.mark.slow
def test_the_tensorboard_tab_answers_hostile_runs_with_short_4xx(tmp_path):
    logs = tmp_path / "logs"
    make_run(logs / "good", m=8, epochs=2, taxonomy=False)
    for name, value in {"tax_abc": "abc", "tax_pairs": [[0, 1]], "tax_dict": {}}.items():
        make_run(logs / name, m=8, epochs=1, taxonomy=False)
        info = json.loads((logs / name / "run.json").read_text())
        (logs / name / "run.json").write_text(json.dumps({**info, "taxonomy": value}))
    make_run(logs / "bad_epoch", m=8, epochs=1, taxonomy=False)
    (snap,) = list_snapshots(logs / "bad_epoch")
    summary = json.loads((snap / "summary.json").read_text())
    (snap / "summary.json").write_text(json.dumps({**summary, "epoch": [1]}))
    make_run(tmp_path / "elsewhere", m=8, epochs=1, taxonomy=False)
    make_run(logs / "linked", m=8, epochs=1, taxonomy=False)
    (logs / "linked" / "epoch=0007-step=000070").symlink_to(list_snapshots(tmp_path / "elsewhere")[0])
    (logs / "outside").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with tensorboard(logs, tmp_path / "server.log") as base:
        status, headers, body = get(base + "/data/plugin/classim/runs")
        runs = {r["run"]: r["epochs"] for r in json.loads(body)}
        assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
        assert "outside" not in runs and runs["linked"] == [0]  # no folder or epoch reached through a link
        for name in ("good", "tax_abc", "tax_pairs", "tax_dict", "linked"):
            status, headers, body = get(f"{base}/data/plugin/classim/explorer?run={name}")
            assert status == 200 and body.startswith("<!DOCTYPE html>"), (name, body[:300])
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
        status, headers, body = get(f"{base}/data/plugin/classim/explorer?run=bad_epoch")
        assert status == 422 and str(tmp_path) not in body and "cannot be read" in body
        status, _, body = get(base + "/data/plugin/classim/explorer?run=%3Cscript%3Ealert(1)%3C/script%3E")
        assert status == 404 and "script" not in body and body == "No such run of lightning_classim under the logdir."
        status, _, body = get(base + "/data/plugin/classim/explorer?run=../../etc")
        assert status == 404
    log = (tmp_path / "server.log").read_text()
    assert "will become an error" not in log and "Traceback" not in log, log[-3000:]


def test_the_page_holds_the_pairs_split_and_failed_groups_of_each_epoch(tmp_path):
    x, _, _ = failed_group_scores(0)  # a failed group; class 1 made a near duplicate of class 2
    n, m = x.shape
    rng = np.random.default_rng(0)
    x[:, 1] = x[:, 2] + 0.05 * rng.standard_normal(n)
    result = analyze(np.corrcoef(x, rowvar=False), n_groups=5, class_names=[f"c{i}" for i in range(m)])
    assert result.pairs and result.failed_groups  # the planted findings are found
    page = explorer_html([ExplorerEpoch(0, 0, result)])
    data = json.loads(re.search(r'<script id="classim-data" type="application/json">(.*?)</script>', page, re.S)[1])
    (epoch,) = data["epochs"]
    assert [(p["kind"], p["i"], p["j"]) for p in epoch["pairs"]] == [(p.kind, p.i, p.j) for p in result.pairs]
    assert [f["members"] for f in epoch["failed"]] == [list(f.members) for f in result.failed_groups]
    assert [s["a"] for s in epoch["split"]] == [list(s.members[0]) for s in result.split_groups]


def test_a_run_folder_named_through_a_link_is_read(tmp_path):
    make_run(tmp_path / "real", m=8, epochs=2, taxonomy=False)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert [p.name for p in list_snapshots(tmp_path / "link")] == ["epoch=0000-step=000000", "epoch=0001-step=000010"]
    proc, _ = cli("export", str(tmp_path / "link"))
    assert proc.returncode == 0, proc.stderr
