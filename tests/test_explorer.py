"""The explorer page, in a real browser (Debian's chromium and chromium-driver, driven by selenium)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lightning_classim import analyze
from lightning_classim.artifacts import list_snapshots, load_snapshot, write_run_info, write_snapshot
from lightning_classim.explorer import ExplorerEpoch, explorer_html, quantise, write_explorer
from lightning_classim.structure import notes_not_warned

STEP = 1 / 254 + 1e-6  # one byte a cell: r to within half of 2/254


def _browser_missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return ""


browser_test = pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "browser present")


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield drv
    drv.quit()


def load(driver, url: str) -> None:
    driver.get(url)
    for _ in range(400):
        if driver.execute_script("return !!(window.classim && window.classim.ready)"):
            return
        time.sleep(0.025)
    raise AssertionError(f"the explorer did not get ready: {driver.page_source[:500]}")


def severe(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def make_run(folder: Path, m: int = 40, epochs: int = 3, taxonomy: bool = True) -> list[Path]:
    rng = np.random.default_rng(0)
    groups = np.arange(m) % 5
    names = [f"g{g}/class {i}" for i, g in enumerate(groups)]
    info = {"num_classes": m, "class_names": names}
    if taxonomy:
        info["taxonomy"] = [groups.tolist()]
    write_run_info(folder, info)
    for epoch in range(epochs):
        x = (1 + epoch) * rng.standard_normal((600, 5))[:, groups] + 2 * rng.standard_normal((600, m))
        write_snapshot(folder, epoch, 10 * epoch, analyze(np.corrcoef(x, rowvar=False), class_names=names), None)
    return list_snapshots(folder)


def test_the_page_is_self_contained_and_holds_every_epoch(tmp_path):
    snaps = make_run(tmp_path / "run")
    page = (write_explorer(tmp_path / "run")).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(link|img|iframe)\b|\bsrc\s*=|https?://", page)  # nothing fetched from anywhere
    data = json.loads(re.search(r'<script id="classim-data" type="application/json">(.*?)</script>', page, re.S)[1])
    assert [e["epoch"] for e in data["epochs"]] == [0, 1, 2] and data["full"] and data["m"] == 40
    assert set(data["orders"]) == {"tree", "taxonomy"}
    last = load_snapshot(snaps[-1]).result
    assert data["orders"]["tree"] == last.order.tolist()
    assert data["epochs"][-1]["levels"] == [
        {"n_groups": lv.n_groups, "groups": lv.groups.tolist(), "distinct": lv.distinct} for lv in last.levels
    ]


def test_quantise_by_hand():
    values = np.array([-1.0, -0.5, 0.0, 0.001, 0.999, 1.0, np.nan])
    q = quantise(values)
    assert q.tolist() == [0, 64, 127, 127, 254, 254, 255]
    assert np.all(np.abs(q[:6] / 127 - 1 - values[:6]) <= STEP)


def test_explorer_errors(tmp_path):
    with pytest.raises(ValueError, match="Expected at least one epoch for the explorer, but got none"):
        explorer_html([])
    with notes_not_warned():
        a, b = analyze(np.eye(3)), analyze(np.eye(4))
    with pytest.raises(ValueError, match="every epoch of the explorer to have 4 classes, but epoch 0 has 3"):
        explorer_html([ExplorerEpoch(0, 0, a), ExplorerEpoch(1, 1, b)])
    with pytest.raises(ValueError, match="the compared run to have the same 3 classes, at most 2048, but it has 4"):
        explorer_html([ExplorerEpoch(0, 0, a)], compare=ExplorerEpoch(0, 0, b))


@browser_test
@pytest.mark.slow
def test_the_page_loads_and_its_cells_are_the_snapshots(tmp_path, driver):
    snaps = make_run(tmp_path / "run")
    path = write_explorer(tmp_path / "run")
    driver.get_log("browser")
    load(driver, path.as_uri())
    assert severe(driver) == []
    result = load_snapshot(snaps[-1]).result
    order, names = result.order, result.class_names
    rng = np.random.default_rng(3)
    cells = rng.integers(0, 40, (200, 2)).tolist()
    got = driver.execute_script("return arguments[0].map(([i, j]) => classim.cell(i, j))", cells)
    for (i, j), cell in zip(cells, got):
        assert cell["row"] == names[order[i]] and cell["col"] == names[order[j]] and not cell["approximate"]
        assert abs(cell["value"] - result.similarity[order[i], order[j]]) <= STEP
    assert driver.execute_script("return classim.epochs()") == [{"epoch": e, "step": 10 * e} for e in range(3)]
    # the slider: epoch 0's cells
    driver.execute_script("return classim.setEpoch(0)")
    first = load_snapshot(snaps[0]).result
    cell = driver.execute_script("return classim.cell(3, 7)")
    assert abs(cell["value"] - first.similarity[order[3], order[7]]) <= STEP  # one order (the last epoch's) for all
    with pytest.raises(Exception, match=r"positions must be in 0..39, got \(40, 0\)"):
        driver.execute_script("return classim.cell(40, 0)")


@browser_test
@pytest.mark.slow
def test_hovering_a_cell_shows_its_two_names_and_r(tmp_path, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    snaps = make_run(tmp_path / "run")
    load(driver, write_explorer(tmp_path / "run").as_uri())
    result = load_snapshot(snaps[-1]).result
    canvas = driver.find_element(By.ID, "classim-canvas")
    view = driver.execute_script("return {scale: classim.view.scale, x0: classim.view.x0, y0: classim.view.y0, "
                                 "gutter: classim.view.gutter}")  # fmt: skip
    width, height = canvas.size["width"], canvas.size["height"]
    for p, q in [(5, 17), (30, 2), (12, 12)]:
        x = view["gutter"] + (q + 0.5 - view["x0"]) * view["scale"]  # right of the row names' gutter
        y = (p + 0.5 - view["y0"]) * view["scale"]
        ActionChains(driver).move_to_element_with_offset(canvas, int(x - width / 2), int(y - height / 2)).perform()
        tip = driver.find_element(By.ID, "classim-tip").get_attribute("textContent")
        i, j = result.order[p], result.order[q]
        assert tip.startswith(f"{result.class_names[i]}  \u00d7  {result.class_names[j]}:  r = "), tip
        assert abs(float(tip.rsplit("= ", 1)[1]) - result.similarity[i, j]) <= STEP + 5e-4


@browser_test
@pytest.mark.slow
def test_select_search_orderings_and_overlays(tmp_path, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    snaps = make_run(tmp_path / "run")
    load(driver, write_explorer(tmp_path / "run").as_uri())
    result = load_snapshot(snaps[-1]).result
    name = result.class_names[7]
    chosen = driver.execute_script("return classim.select(arguments[0])", name)
    row = result.similarity[7].astype(np.float64).copy()
    row[7] = -np.inf
    expected = [result.class_names[j] for j in np.argsort(-row, kind="stable")[:10]]
    got = [n["name"] for n in chosen["nearest"]]
    assert len(got) == 10 and set(got[:5]) == set(expected[:5])  # ties within one byte may swap neighbours
    assert {g["group"] for g in chosen["groups"] if g["level"].startswith("groups")} == {int(result.groups[7])}
    assert driver.find_element(By.ID, "classim-selection").text.startswith(name)
    with pytest.raises(Exception, match='no class named "nope"'):
        driver.execute_script("return classim.select('nope')")
    box = driver.find_element(By.ID, "classim-search")
    box.clear()
    box.send_keys("class 13")
    assert [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#classim-found li")] == [result.class_names[13]]
    box.send_keys(Keys.ENTER)
    assert driver.find_element(By.ID, "classim-selection").text.startswith(result.class_names[13])
    # the taxonomy order: classes sorted by their known group, the tree order within
    driver.execute_script("classim.order('taxonomy')")
    shown = driver.execute_script("return classim.names()")
    labels = [int(n.split("/")[0][1:]) for n in shown]
    assert labels == sorted(labels)
    with pytest.raises(Exception, match='no ordering "nope"'):
        driver.execute_script("classim.order('nope')")
    driver.execute_script("classim.order('tree')")
    # overlays and lists: the pairs worth a look are listed beside the picture
    assert (
        result.pairs == () and driver.find_element(By.ID, "classim-pairs").text == "Nothing stands out in this epoch."
    )
    assert severe(driver) == []
    # a run with a near duplicate: the panel lists it by name (it must not fall back to "nothing stands out")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 12))[:, np.arange(12) % 3] + rng.standard_normal((500, 12))
    x[:, 1] = x[:, 0] + 0.05 * rng.standard_normal(500)
    names = [f"n{i}" for i in range(12)]
    write_snapshot(tmp_path / "dup", 0, 0, analyze(np.corrcoef(x, rowvar=False), class_names=names), None)
    dup = load_snapshot(list_snapshots(tmp_path / "dup")[0]).result
    assert ("near_duplicate", "n0", "n1") in [p.key for p in dup.pairs]
    load(driver, write_explorer(tmp_path / "dup").as_uri())
    text = driver.find_element(By.ID, "classim-pairs").text
    assert "n0" in text and "n1" in text and "Nothing stands out" not in text, text
    assert severe(driver) == []


@browser_test
@pytest.mark.slow
def test_many_classes_block_means_off_the_band(tmp_path, driver):
    # above full_max: the last epoch's band and nearest classes are exact, other cells are block means
    rng = np.random.default_rng(5)
    m = 300
    sim = np.corrcoef(rng.standard_normal((m // 10, 50))[np.arange(m) % (m // 10)] + rng.standard_normal((m, 50)))
    result = analyze(sim, find_failed=False)
    page = explorer_html([ExplorerEpoch(0, 0, result)], full_max=100, overview=30, band=5, neighbours=4)
    path = tmp_path / "big.html"
    path.write_text(page)
    load(driver, path.as_uri())
    assert severe(driver) == []
    order = result.order
    near = driver.execute_script("return classim.cell(100, 103)")
    assert not near["approximate"] and abs(near["value"] - sim[order[100], order[103]]) <= STEP
    far = driver.execute_script("return classim.cell(5, 250)")
    if far["approximate"]:  # the block mean of the 10 x 10 positions around it (30 blocks of 10)
        block = sim[np.ix_(order[0:10], order[250:260])].mean()
        assert abs(far["value"] - block) <= STEP
    i = order[40]
    best = np.argsort(-np.where(np.arange(m) == i, -np.inf, sim[i]))[0]
    cell = driver.execute_script(
        "return classim.cell(arguments[0], arguments[1])", 40, int(np.nonzero(order == best)[0][0])
    )
    assert not cell["approximate"] and abs(cell["value"] - sim[i, best]) <= STEP


@browser_test
@pytest.mark.slow
def test_compare_html_shows_both_runs_and_their_difference(tmp_path, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", epochs=2)
    out = tmp_path / "ab.html"
    command = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--epoch", "1", "--html", str(out)]
    proc = subprocess.run([sys.executable, "-m", "lightning_classim", *command], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    load(driver, out.as_uri())
    ra, rb = load_snapshot(a[1]).result, load_snapshot(b[1]).result
    order = ra.order
    views = Select(driver.find_element(By.ID, "classim-compare"))
    for view, expected in (("run", ra.similarity), ("other", rb.similarity), ("diff", rb.similarity - ra.similarity)):
        views.select_by_value(view)
        cell = driver.execute_script("return classim.cell(4, 9)")
        assert abs(cell["value"] - expected[order[4], order[9]]) <= 2 * STEP, view


def test_classim_explore_command(tmp_path):
    make_run(tmp_path / "run", epochs=2)
    out = tmp_path / "x.html"
    command = ["explore", str(tmp_path / "run"), "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "lightning_classim", *command], capture_output=True, text=True)
    assert proc.returncode == 0 and f"explorer written to {out}" in proc.stdout and out.stat().st_size > 1000
    missing = subprocess.run([sys.executable, "-m", "lightning_classim", "explore", str(tmp_path / "nope")],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 1 and "classim explore: error:" in missing.stderr and "Traceback" not in missing.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@browser_test
@pytest.mark.slow
def test_tensorboard_tab_lists_the_run_and_shows_its_explorer(tmp_path, driver):
    from selenium.webdriver.common.by import By

    make_run(tmp_path / "logs" / "exp" / "version_0" / "classim")
    make_run(tmp_path / "logs" / "exp" / "version_0" / "classim" / "sources" / "features")  # not listed apart
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "logs"),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        listing = None
        for _ in range(120):
            try:
                listing = json.loads(urllib.request.urlopen(base + "/data/plugins_listing", timeout=2).read())
                break
            except OSError:
                time.sleep(0.25)
        assert listing is not None, "tensorboard did not start"
        assert listing["classim"]["enabled"] and listing["classim"]["tab_name"] == "Class similarity"
        runs = json.loads(urllib.request.urlopen(base + "/data/plugin/classim/runs", timeout=10).read())
        assert runs == [{"run": "exp/version_0/classim", "epochs": [0, 1, 2], "num_classes": 40}]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(base + "/data/plugin/classim/explorer?run=../../etc", timeout=10)
        driver.get(base + "/#classim")
        for _ in range(200):
            frames = driver.find_elements(By.TAG_NAME, "iframe")
            if frames:
                break
            time.sleep(0.1)
        driver.switch_to.frame(frames[0])
        for _ in range(200):
            if driver.find_elements(By.ID, "classim-tb-frame"):
                break
            time.sleep(0.1)
        assert "exp/version_0/classim (40 classes, epochs 0..2)" in driver.find_element(By.ID, "classim-tb-runs").text
        driver.switch_to.frame(driver.find_element(By.ID, "classim-tb-frame"))
        for _ in range(200):
            if driver.execute_script("return !!(window.classim && window.classim.ready)"):
                break
            time.sleep(0.1)
        assert driver.execute_script("return classim.epochs().length") == 3
        assert driver.execute_script("return classim.cell(0, 0).value") == pytest.approx(1.0, abs=STEP)
    finally:
        driver.switch_to.default_content()
        server.terminate()
        server.wait(timeout=20)
