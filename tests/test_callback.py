import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import wandb_records
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from scipy.spatial.distance import squareform

from lightning_classim import ClassSimilarityCallback, StructureOptions
from lightning_classim.artifacts import list_snapshots, load_snapshot
from lightning_classim.demo import DemoClassifier, loaders
from lightning_classim.render import HeatmapOptions

M = 12  # 3 superclasses x 4 subclasses
DATA = {"superclasses": 3, "subclasses": 4, "dim": 16}


def small_loaders(seed: int = 0):
    return loaders(n_per_class=60, seed=seed, batch_size=64, **DATA)


def trainer(tmp_path: Path, callbacks: list, logger: Any = None, epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    opts = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": logger if logger is not None else TensorBoardLogger(str(tmp_path), name="tb"),
        "callbacks": callbacks,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(tmp_path),
    }
    opts.update(kwargs)
    return pl.Trainer(**opts)


def model() -> DemoClassifier:
    pl.seed_everything(0)
    return DemoClassifier(in_dim=16, num_classes=M, hidden=32)


def logits_of(net: DemoClassifier, val) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x) for x, _ in val]).double().numpy()


def wandb_offline_summary(path: Path) -> dict[str, str]:
    """Run-summary updates recorded in an offline ``.wandb`` file."""
    summary = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = item.value_json
    return summary


@pytest.mark.slow
def test_fit_logs_to_tensorboard_wandb_csv_and_disk(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train, val, names, parents = small_loaders()
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    wb = WandbLogger(project="classim-test", save_dir=str(tmp_path), offline=True)
    csv = CSVLogger(str(tmp_path), name="csv")
    cb = ClassSimilarityCallback(M, class_names=names, taxonomy=parents)
    net = model()
    with pytest.warns(UserWarning, match=r"logs only the scalars to CSVLogger; the heatmaps .* are written to"):
        trainer(tmp_path, [cb], logger=[tb, wb, csv], epochs=3, num_sanity_val_steps=2).fit(net, train, val)
    wb.experiment.finish()

    # TensorBoard, read back with TensorBoard's own reader: one image per validated epoch (no sanity check)
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "tensors": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    images = acc.Images("classim/heatmap")
    assert len(images) == 3
    assert [e.step for e in images] == sorted(e.step for e in images) and len({e.step for e in images}) == 3
    assert "classim/groups/text_summary" in tags["tensors"]
    text = acc.Tensors("classim/groups/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| group | size | cohesion |" in text and "animal/" in text
    assert "classim/pairs/text_summary" in tags["tensors"]  # the pairs worth a look, as a table, every epoch
    pairs = acc.Tensors("classim/pairs/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert pairs.startswith(("Pairs worth a look:", "No pair stands out."))
    assert "classim/similarity" in tags["histograms"]
    assert len(acc.Histograms("classim/similarity")) == 3
    for key in ("n_groups", "cophenetic_corr", "within_minus_between", "offdiag_skew", "taxonomy_ari", "drift",
                "n_levels", "pairs/near_duplicate", "pairs/outlier", "pairs/hub"):  # fmt: skip
        assert f"classim/{key}" in tags["scalars"], key
    assert len(acc.Scalars("classim/drift")) == 2  # from the second analysed epoch on

    # W&B offline run folder: the images and the table are on disk
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    media = run_dirs[0] / "files" / "media"
    assert len(list((media / "images" / "classim").glob("heatmap_*.png"))) == 3
    tables = list((media / "table" / "classim").glob("groups_*.table.json"))
    assert len(tables) == 3
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["group", "coarse", "size", "cohesion", "separation", "nearest", "members"]
    pages = sorted((media / "html" / "classim").glob("explorer_*.html"))  # the explorer as wandb.Html, each epoch
    assert len(pages) == 3 and 'id="classim-data"' in pages[-1].read_text()
    assert all((s / "explorer.html").is_file() for s in list_snapshots(cb.save_dir))
    pair_tables = list((media / "table" / "classim").glob("pairs_*.table.json"))
    assert len(pair_tables) == 3
    assert json.loads(pair_tables[0].read_text())["columns"] == ["kind", "class", "with", "score", "similarity"]
    summary = wandb_offline_summary(next(run_dirs[0].glob("*.wandb")))
    assert float(summary["classim/n_groups"]) >= 1 and "classim/drift" in summary

    # CSV: the scalars
    rows = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()
    assert "classim/n_groups" in rows[0]

    # disk artifacts load back and agree with the model's logits
    snaps = list_snapshots(cb.save_dir)
    assert len(snaps) == 3
    last = load_snapshot(snaps[-1]).result
    assert last.class_names == tuple(names)
    ref = np.corrcoef(logits_of(net, val), rowvar=False)
    np.testing.assert_allclose(last.similarity, ref, atol=1e-5)
    assert sorted(last.order.tolist()) == list(range(M))
    assert last.metrics["n_groups"] == len(set(last.groups.tolist()))
    assert (snaps[-1] / "heatmap.png").stat().st_size > 0
    assert cb.save_dir == Path(tb.log_dir) / "classim"
    run = json.loads((cb.save_dir / "run.json").read_text())
    assert run["num_classes"] == M and run["class_names"] == names


@pytest.mark.slow
def test_validate_alone_and_module_hook(tmp_path):
    _train, val, _names, _ = small_loaders()

    class LossOnly(DemoClassifier):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            return {"loss": torch.nn.functional.cross_entropy(self(x), y)}

    pl.seed_everything(0)
    net = LossOnly(in_dim=16, num_classes=M, hidden=32)
    cb = ClassSimilarityCallback(M, module="fc", save_dir=tmp_path / "out", async_analysis=False, explorer=False)
    trainer(tmp_path, [cb], logger=False).validate(net, val, verbose=False)
    snaps = list_snapshots(tmp_path / "out")
    assert len(snaps) == 1
    ref = np.corrcoef(logits_of(net, val), rowvar=False)
    np.testing.assert_allclose(load_snapshot(snaps[0]).result.similarity, ref, atol=1e-5)
    assert not (snaps[0] / "explorer.html").exists()  # explorer=False: no page
    with pytest.raises(ValueError, match=r"`explorer` to be True or False, but got 'no'"):
        ClassSimilarityCallback(M, explorer="no")


@pytest.mark.slow
def test_dict_output_key_every_n_epochs_and_two_instances(tmp_path):
    train, val, _names, _ = small_loaders()

    class DictOut(DemoClassifier):
        def validation_step(self, batch, batch_idx):
            return {"scores": self(batch[0])}

    pl.seed_everything(0)
    net = DictOut(in_dim=16, num_classes=M, hidden=32)
    a = ClassSimilarityCallback(M, output_key="scores", every_n_epochs=2)
    b = ClassSimilarityCallback(M, output_key="scores", scores="ranks", tag_prefix="classim_ranks")
    assert a.state_key != b.state_key
    trainer(tmp_path, [a, b], epochs=4).fit(net, train, val)
    assert [h["epoch"] for h in a.history] == [1, 3]
    assert [h["epoch"] for h in b.history] == [0, 1, 2, 3]
    assert a.save_dir != b.save_dir and len(list_snapshots(b.save_dir)) == 4


@pytest.mark.slow
def test_resume_from_checkpoint_continues_change_metrics(tmp_path):
    train, val, _names, _ = small_loaders()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "out")
    trainer(tmp_path, [cb, ckpt], epochs=2, enable_checkpointing=True).fit(model(), train, val)
    assert [h["epoch"] for h in cb.history] == [0, 1]

    cb2 = ClassSimilarityCallback(M, save_dir=tmp_path / "out")
    t2 = trainer(tmp_path, [cb2, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], epochs=3, enable_checkpointing=True)
    t2.fit(model(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in cb2.history] == [2]
    assert "drift" in cb2.history[0], "the first epoch after resuming is compared with the last one before"
    snaps = [load_snapshot(p) for p in list_snapshots(tmp_path / "out")]
    assert [s.epoch for s in snaps] == [0, 1, 2]
    a = squareform(snaps[1].result.similarity - np.eye(M, dtype=np.float32), checks=False)
    b = squareform(snaps[2].result.similarity - np.eye(M, dtype=np.float32), checks=False)
    assert cb2.history[0]["drift"] == pytest.approx(1 - np.corrcoef(a, b)[0, 1], abs=1e-6)


def assert_same_result(a, b) -> None:
    for name in ("similarity", "order", "linkage", "groups"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.class_names == b.class_names
    assert a.to_dict() == b.to_dict()
    assert (a.n_groups, a.summary, a.split_groups, a.failed_groups, a.notes) == (
        b.n_groups, b.summary, b.split_groups, b.failed_groups, b.notes
    )  # fmt: skip


@pytest.mark.slow
def test_last_result_after_resume_is_what_was_saved(tmp_path):
    # one result, one shape: in memory, on disk and in the checkpoint; after resuming, `last_result` is the saved one
    train, val, names, _ = small_loaders()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    sources = ["scores", "weights:fc"]
    cb = ClassSimilarityCallback(M, class_names=names, save_dir=tmp_path / "out", sources=sources)
    trainer(tmp_path, [cb, ckpt], epochs=2, enable_checkpointing=True).fit(model(), train, val)
    saved = cb.last_result
    assert saved is not None and saved.n_groups >= 2 and saved.summary
    assert_same_result(load_snapshot(list_snapshots(tmp_path / "out")[-1]).result, saved)

    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # tensors and plain data only
    assert any(key.startswith("ClassSimilarityCallback") for key in checkpoint["callbacks"])
    resumed = ClassSimilarityCallback(M, class_names=names, save_dir=tmp_path / "out2", sources=sources)
    t2 = trainer(tmp_path, [resumed], epochs=2)  # max_epochs reached: restores the state, runs no epoch
    t2.fit(model(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.history == []
    assert_same_result(resumed.last_result, saved)
    assert_same_result(resumed.last_results["weights:fc"], cb.last_results["weights:fc"])


class BrokenLogger(Logger):
    @property
    def name(self) -> str:
        return "broken"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if any(k.startswith("classim/") for k in metrics):
            raise RuntimeError("tracker is down")


@pytest.mark.slow
def test_failing_logger_does_not_stop_training_or_lose_files(tmp_path):
    train, val, _, _ = small_loaders()
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "out")
    with pytest.warns(UserWarning, match=r"logging epoch 0 to BrokenLogger failed \(RuntimeError: tracker is down\)"):
        t = trainer(tmp_path, [cb], logger=[BrokenLogger()], epochs=2)
        t.fit(model(), train, val)
    assert t.current_epoch == 2
    assert len(list_snapshots(tmp_path / "out")) == 2


class FailingAnalysis(ClassSimilarityCallback):
    def _analyse(self, *args: Any, **kwargs: Any) -> Any:
        raise MemoryError("out of memory while clustering")


@pytest.mark.slow
@pytest.mark.parametrize("async_analysis", [True, False])
def test_analysis_errors_are_reported_not_lost(tmp_path, async_analysis):
    train, val, _, _ = small_loaders()
    cb = FailingAnalysis(M, save_dir=tmp_path / "out", async_analysis=async_analysis)
    with pytest.warns(UserWarning, match=r"analysis of an epoch failed and was skipped: MemoryError: out of memory"):
        t = trainer(tmp_path, [cb], epochs=2)
        t.fit(model(), train, val)
    assert t.current_epoch == 2


@pytest.mark.slow
def test_choice_at_max_groups_warns_once_and_default_range_does_not(tmp_path):
    train, val, _, _ = small_loaders()
    capped = ClassSimilarityCallback(
        M, save_dir=tmp_path / "capped", options=StructureOptions(max_groups=2), sources=["scores", "weights:fc"]
    )
    free = ClassSimilarityCallback(M, save_dir=tmp_path / "free", tag_prefix="classim_free")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [capped, free], epochs=2).fit(model(), train, val)
    said = [str(w.message) for w in caught if "the most it tried" in str(w.message)]
    assert len(said) == 2, said  # once per source and fit, not every epoch
    assert said[0].startswith("ClassSimilarityCallback: at epoch 0 the automatic choice picked 2 groups")
    assert said[1].startswith("ClassSimilarityCallback: at epoch 0, source 'weights:fc': the automatic choice picked 2")
    assert all("Pass `StructureOptions(max_groups=...)` larger than 2" in text for text in said)
    summary = json.loads((list_snapshots(tmp_path / "capped")[-1] / "summary.json").read_text())
    assert list(summary["silhouettes"]) == ["2"] and summary["n_groups"] == 2
    # 12 classes: the default range 2..11 covers every cut, so a choice at its top is no reason to warn
    free_summary = json.loads((list_snapshots(tmp_path / "free")[-1] / "summary.json").read_text())
    assert list(free_summary["silhouettes"]) == [str(k) for k in range(2, M)]


def test_no_scores_gives_a_clear_error(tmp_path):
    _train, val, _, _ = small_loaders()

    class NoScores(DemoClassifier):
        def validation_step(self, batch, batch_idx):
            return None

    cb = ClassSimilarityCallback(M)
    with pytest.raises(ValueError, match=r"found no scores: `validation_step` returned NoneType.*module='fc'"):
        trainer(tmp_path, [cb]).validate(NoScores(in_dim=16, num_classes=M, hidden=32), val, verbose=False)


def test_wrong_width_and_bad_module(tmp_path):
    _, val, _, _ = small_loaders()
    with pytest.raises(ValueError, match=r"ClassSimilarityCallback\(num_classes=7\) got scores of shape \(\d+, 12\)"):
        trainer(tmp_path, [ClassSimilarityCallback(7)]).validate(model(), val, verbose=False)
    with pytest.raises(ValueError, match=r"`module` to name a submodule of DemoClassifier, but got 'head'.*'fc'"):
        trainer(tmp_path, [ClassSimilarityCallback(M, module="head")]).validate(model(), val, verbose=False)


def test_no_logger_and_no_save_dir_fails_at_setup(tmp_path):
    _, val, _, _ = small_loaders()
    with pytest.raises(ValueError, match=r"no logger and `save_dir` is None. Pass `save_dir=...`"):
        trainer(tmp_path, [ClassSimilarityCallback(M)], logger=False).validate(model(), val, verbose=False)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_classes": 1}, r"`num_classes` to be an int larger than 1, but got 1"),
        ({"scores": "softmax"}, r"`scores` to be one of"),
        ({"class_names": ["a"]}, r"`class_names` to name all 4 classes, but got 1 names"),
        ({"every_n_epochs": 0}, r"`every_n_epochs` to be an int of at least 1, but got 0"),
        ({"tag_prefix": "/x/"}, r"`tag_prefix` to be a non-empty name without leading or trailing '/', but got '/x/'"),
        ({"options": {"method": "average"}}, r"`options` to be a StructureOptions or None, but got dict\. Example"),
        ({"options": StructureOptions(n_groups=9)}, r"`n_groups` to be an int in 1..4 \(the number of classes\), but"),
        ({"heatmap": "big"}, r"`heatmap` to be a HeatmapOptions or None, but got str"),
        ({"multilabel": "no"}, r"`multilabel` to be True or False, but got 'no'"),
        ({"async_analysis": 1}, r"`async_analysis` to be True or False, but got 1"),
        ({"taxonomy": [0, 1]}, r"`taxonomy` to give one label per class \(4\) at every level, but level 0 has 2"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, pattern):
    args = {"num_classes": 4, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        ClassSimilarityCallback(**args)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: StructureOptions(method="ward2"), r"`method` to be one of"),
        (lambda: StructureOptions(distance="cos"), r"`distance` to be one of"),
        (lambda: StructureOptions(n_groups=2, distance_threshold=0.3), r"only one of `n_groups` and `distance_thre"),
        (lambda: StructureOptions(max_groups=1), r"`max_groups` to be an int of at least 2, but got 1"),
        (lambda: HeatmapOptions(cmap="nope"), r"`cmap` to be a matplotlib colormap name, but got 'nope'"),
        (lambda: HeatmapOptions(max_pixels=3), r"`max_pixels` to be an int of at least 16, but got 3"),
        (lambda: HeatmapOptions(max_pixels=10**6), r"`max_pixels` to be an int in 16..8192, but got 1000000"),
    ],
)
def test_bad_options_raise_where_they_are_made(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_integer_like_num_classes():
    assert ClassSimilarityCallback(np.int64(5)).num_classes == 5
    assert ClassSimilarityCallback(torch.tensor(5)).num_classes == 5


def test_lightning_cli_yaml(tmp_path, capsys):
    from pytorch_lightning.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning_classim.ClassSimilarityCallback\n"
        "      init_args:\n"
        "        num_classes: 12\n"
        "        scores: ranks\n"
        "        every_n_epochs: 2\n"
        "        options:\n"
        "          method: average\n"
        "          n_groups: 3\n"
        "          failed_ratio: 0.6\n"
        "        heatmap: {max_pixels: 512}\n"
        "        sources:\n"
        "          - scores\n"
        "          - class_path: lightning_classim.CooccurrenceSource\n"
        "            init_args:\n"
        "              options: {method: single, max_groups: 5}\n"
        "          - class_path: lightning_classim.MetricSource\n"
        "            init_args:\n"
        "              name: probs\n"
        "              metric:\n"
        "                class_path: lightning_classim.ClassSimilarity\n"
        "                init_args: {num_classes: 12, scores: probs}\n"
        "model:\n"
        "  num_classes: 12\n"
    )
    cli = LightningCLI(DemoClassifier, run=False, args=["--config", str(config)], save_config_callback=None)
    cbs = [c for c in cli.trainer.callbacks if isinstance(c, ClassSimilarityCallback)]
    assert len(cbs) == 1
    cb = cbs[0]
    assert (cb.num_classes, cb.scores, cb.every_n_epochs) == (12, "ranks", 2)
    assert cb.options == StructureOptions(method="average", n_groups=3, failed_ratio=0.6)
    assert cb.heatmap == HeatmapOptions(max_pixels=512)
    assert [(src.name, type(src).__name__, src.options) for src in cb.sources] == [
        ("scores", "ScoresSource", None),
        ("cooccurrence", "CooccurrenceSource", StructureOptions(method="single", max_groups=5)),
        ("probs", "MetricSource", None),
    ]
    assert cb.sources[2].metric.scores == "probs"
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("scores: ranks", "scores: softmax"))
    with pytest.raises(SystemExit, match=r"^2$"):  # jsonargparse's usage error, saying why on stderr
        LightningCLI(DemoClassifier, run=False, args=["--config", str(bad)], save_config_callback=None)
    assert "softmax" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- DDP

DDP_SCRIPT = Path(__file__).with_name("ddp_validate_script.py")


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2])
def test_ddp_trainer_matches_single_process(tmp_path, devices):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    outs = {}
    for n in (1, devices):
        out = tmp_path / f"dev{n}"
        proc = subprocess.run(
            [sys.executable, str(DDP_SCRIPT), str(out), str(n)], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        snaps = list_snapshots(out / "classim")
        assert len(snaps) == 1
        outs[n] = load_snapshot(snaps[0]).result.similarity
    np.testing.assert_allclose(outs[devices], outs[1], atol=1e-5)


# -------------------------------------------------------------------------------------------- TensorBoard server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_tensorboard_server_serves_our_tags(tmp_path):
    train, val, names, _ = small_loaders()
    cb = ClassSimilarityCallback(M, class_names=names)
    trainer(tmp_path, [cb], epochs=2).fit(model(), train, val)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--samples_per_plugin",
            "images=1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin"

        def get(path: str) -> Any:
            with urllib.request.urlopen(f"{base}/{path}", timeout=5) as r:
                return json.loads(r.read())

        deadline = time.monotonic() + 90
        images: dict = {}
        text: dict = {}
        samples: list = []
        while time.monotonic() < deadline:
            try:
                images, text = get("images/tags"), get("text/tags")
                run = next((k for k, v in images.items() if "classim/heatmap" in v), None)
                if run is not None:
                    samples = get(f"images/images?run={urllib.parse.quote(run)}&tag=classim/heatmap&sample=0")
                    if len(samples) == 2:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        run = next(k for k, v in images.items() if "classim/heatmap" in v)
        assert "classim/groups/text_summary" in text[run]
        assert len(samples) == 2  # both epochs are kept
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_history_is_empty_before_fit():
    cb = ClassSimilarityCallback(4)
    assert cb.history == [] and cb.last_result is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cb.state_dict() == {"version": 2, "num_classes": 4, "validations": 0, "results": {}, "streams": {},
                                   "run_id": None}  # fmt: skip
        cb.load_state_dict({})
    # a checkpoint of the earlier format (version 1) is not restored, and the user is told
    with pytest.warns(UserWarning, match=r"last analysis is from an older version .* is not restored"):
        cb.load_state_dict({"version": 1, "num_classes": 4, "similarity": torch.eye(4)})
    assert cb.last_result is None


@pytest.mark.slow
def test_pending_analysis_is_finished_when_training_crashes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train, val, _, _ = small_loaders()

    class CrashesInEpoch1(DemoClassifier):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    pl.seed_everything(0)
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    cb = ClassSimilarityCallback(M, save_dir=tmp_path / "out")
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [cb], logger=tb, epochs=3).fit(
            CrashesInEpoch1(in_dim=16, num_classes=M, hidden=32), train, val
        )
    assert len(list_snapshots(tmp_path / "out")) == 1  # epoch 0 was analysed and written
    assert [h["epoch"] for h in cb.history] == [0]  # and handed to the loggers
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert len(acc.Images("classim/heatmap")) == 1
