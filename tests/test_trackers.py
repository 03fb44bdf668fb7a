"""Every tracker, in both Lightning namespaces, read back with the tracker's own reader."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_heatmap_inside, lightning_net, wandb_records, wandb_run_file
from PIL import Image
from scipy.cluster.hierarchy import cophenet
from sklearn.metrics import adjusted_rand_score

from lightning_classim import ClassSimilarityCallback
from lightning_classim.artifacts import list_snapshots, load_snapshot
from lightning_classim.callback import register_logger
from lightning_classim.demo import loaders

L = pytest.importorskip("lightning.pytorch", reason="the `lightning` package is not installed")
pl = pytest.importorskip("pytorch_lightning")
M = 12


def make_net(namespace):
    """The same small classifier as a LightningModule of either namespace."""
    return lightning_net(namespace, 16, 32, M)


def fit(namespace, tmp_path, loggers, epochs=2, **cb):
    train, val, names, _ = loaders(n_per_class=40, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)
    callback = ClassSimilarityCallback(M, class_names=names, **cb)
    trainer = namespace.Trainer(max_epochs=epochs, accelerator="cpu", logger=loggers, callbacks=[callback],
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                enable_checkpointing=False, default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(make_net(namespace), train, val)
    return callback


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pytorch_lightning", "lightning.pytorch"])
def test_tensorboard_in_both_namespaces_with_the_loggers_prefix(tmp_path, name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    namespace = pl if name == "pytorch_lightning" else L
    logger = namespace.loggers.TensorBoardLogger(str(tmp_path), name="tb", prefix="run1")
    cb = fit(namespace, tmp_path, logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert len(acc.Images("run1-classim/heatmap")) == 2  # the pictures get the scalars' prefix
    assert "run1-classim/n_groups" in tags["scalars"] and "run1-classim/groups/text_summary" in tags["tensors"]
    # the picture reads alone: the heatmap is inside, with the class names, a colour bar and the epoch as title
    image = np.asarray(Image.open(io.BytesIO(acc.Images("run1-classim/heatmap")[-1].encoded_image_string)))
    snap = load_snapshot(list_snapshots(cb.save_dir)[-1])
    box = snap.extra["heatmap_box"]
    assert_heatmap_inside(image, box, snap.result.similarity, snap.result.order, snap.result.groups)
    assert image.shape[1] > box[2] + 20 and box[0] > 40 and box[1] > 40  # colour bar right, names left and on top
    assert (image[box[1] : box[3], : box[0] - 2] < 128).any()  # text left of the heatmap


@pytest.mark.slow
def test_wandb_in_the_lightning_namespace_with_prefix_and_run_params(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = L.loggers.WandbLogger(project="classim-test", save_dir=str(tmp_path), offline=True, prefix="p")
    fit(L, tmp_path, logger)
    logger.experiment.finish()
    run_file = wandb_run_file(tmp_path)
    history, config = [], {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
        elif kind == "config":
            config.update({item.key: item.value_json for item in record.config.update})
    heatmaps = [h for h in history if "p-classim/heatmap/_type" in h]  # W&B nests an image's fields
    assert len(heatmaps) == 2 and all("p-classim/groups/_type" in h and "p-classim/n_groups" in h for h in heatmaps)
    assert json.loads(heatmaps[0]["p-classim/heatmap/_type"]) == "image-file"
    assert json.loads(heatmaps[0]["p-classim/groups/_type"]) == "table-file"
    assert json.loads(config["classim/num_classes"]) == M and json.loads(config["classim/method"]) == "complete"


@pytest.mark.slow
def test_mlflow_images_with_steps_tables_params_and_files(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = L.loggers.MLFlowLogger(experiment_name="classim", tracking_uri=uri, artifact_location=str(tmp_path / "a"))
    cb = fit(L, tmp_path, logger)
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.data.params["classim/num_classes"] == str(M) and run.data.params["classim/scores"] == "logits"
    steps = [m.step for m in client.get_metric_history(logger.run_id, "classim/n_groups")]
    snaps = list_snapshots(cb.save_dir)
    assert steps == [load_snapshot(s).step for s in snaps]

    def files(path=""):
        out = []
        for item in client.list_artifacts(logger.run_id, path):
            out += files(item.path) if item.is_dir else [item.path]
        return out

    everything = files()
    images = [p for p in everything if p.startswith("images/classim~heatmap+step+") and p.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == steps  # a step slider in the UI
    assert "classim/groups/epoch=0001.json" in everything and "classim/groups/epoch=0001.md" in everything
    assert "classim/pairs/epoch=0001.json" in everything
    last = f"classim/files/{snaps[-1].name}"
    assert {f"{last}/similarity.npy", f"{last}/summary.json", f"{last}/heatmap.png"} <= set(everything)
    page = Path(client.download_artifacts(logger.run_id, f"{last}/explorer.html")).read_text()  # the explorer, as HTML
    assert page.startswith("<!DOCTYPE html>") and 'id="classim-data"' in page
    table = json.loads(Path(client.download_artifacts(logger.run_id, "classim/groups/epoch=0001.json")).read_text())
    result = load_snapshot(snaps[-1]).result
    assert table["columns"][:3] == ["group", "coarse", "size"] and len(table["data"]) == result.n_groups


class OfflineComet:
    """A CometLogger that writes Comet's offline archive. Lightning 2.5-2.6's ``CometLogger(online=False)`` disables
    the experiment (Lightning #21617): the logger is given a real offline experiment, as the upstream fix (#21619)
    does. Lightning before 2.5 writes the archive with ``save_dir``."""

    @staticmethod
    def make(folder: Path):
        import inspect

        import comet_ml

        if "online" not in inspect.signature(L.loggers.CometLogger.__init__).parameters:  # Lightning < 2.5
            return L.loggers.CometLogger(save_dir=str(folder), project_name="classim-test")

        class Logger(L.loggers.CometLogger):
            def _create_experiment(self) -> None:
                config = comet_ml.ExperimentConfig(offline_directory=str(folder))
                self._experiment = comet_ml.start(online=False, project=self._project_name, experiment_config=config)

        return Logger(online=False, project="classim-test")


@pytest.mark.slow
def test_comet_offline_archive_holds_images_tables_and_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the callback's files go under Lightning's log_dir for Comet, relative to here
    logger = OfflineComet.make(tmp_path / "comet")
    fit(L, tmp_path, logger)
    logger.experiment.end()
    messages = []
    for archive in (tmp_path / "comet").glob("*.zip"):  # one; Lightning before 2.5 may leave an empty second one
        with zipfile.ZipFile(archive) as zf:
            messages += [json.loads(line) for line in zf.read("messages.json").decode().splitlines()]
    uploads = [m["payload"].get("additional_params") or {} for m in messages if m["type"] == "file_upload"]
    assert [u["step"] for u in uploads if u.get("figName") == "classim/heatmap"] == [6, 12]
    assert [u["fileName"] for u in uploads if u.get("extension") == "csv" and "groups" in u["fileName"]] == [
        "classim_groups_epoch=0000.csv", "classim_groups_epoch=0001.csv"
    ]  # fmt: skip
    assert sum(u.get("type") == "text-sample" for u in uploads) == 2
    pages = [u["fileName"] for u in uploads if str(u.get("fileName", "")).endswith(".html")]
    assert pages == ["classim_explorer_epoch=0000.html", "classim_explorer_epoch=0001.html"]
    metrics = {m["payload"]["metric"]["metricName"] for m in messages if m["type"] == "metric_msg"}
    params = {m["payload"]["param"]["paramName"] for m in messages if m["type"] == "parameter_msg"}
    assert "classim/n_groups" in metrics and "classim/num_classes" in params


@pytest.mark.slow
def test_a_comet_logger_made_offline_that_records_nothing_is_warned_at_setup(tmp_path, monkeypatch):
    import inspect

    if "online" not in inspect.signature(L.loggers.CometLogger.__init__).parameters:
        pytest.skip("this Lightning's CometLogger has no `online` (it writes its archive with `save_dir`)")
    monkeypatch.chdir(tmp_path)
    logger = L.loggers.CometLogger(online=False, project="classim-test")
    with pytest.warns(UserWarning, match=r"CometLogger\(online=False\) records nothing \(Lightning #21617.*'Comet "
                                         r"offline', has a five-line OfflineCometLogger"):  # fmt: skip
        fit(L, tmp_path, logger, epochs=1)


@pytest.mark.slow
def test_dvclive_images_and_scalars(tmp_path, monkeypatch):
    from dvclive.lightning import DVCLiveLogger

    monkeypatch.chdir(tmp_path)  # DVCLive looks for a git repository in the working folder; none here

    logger = DVCLiveLogger(dir=str(tmp_path / "dvclive"))
    fit(L, tmp_path, logger)
    root = tmp_path / "dvclive"
    images = sorted(p.name for p in (root / "plots" / "images" / "classim" / "heatmap").glob("*.png"))
    assert images == ["epoch=0000.png", "epoch=0001.png"]
    rows = (root / "plots" / "metrics" / "classim" / "n_groups.tsv").read_text().splitlines()
    assert rows[0].split("\t")[-1] == "n_groups" and len(rows) == 3
    assert "| group | size |" in (root / "classim" / "classim" / "groups_epoch=0001.md").read_text()


@pytest.mark.slow
def test_csv_gets_the_scalars_and_a_registered_writer_the_pictures(tmp_path):
    class Pictures(pl.loggers.CSVLogger):
        pass

    def write(logger, log):
        logger.log_metrics(log.tagged_scalars(), log.step)
        for panel in log.panels:
            Image.fromarray(panel.image).save(Path(logger.log_dir) / f"heatmap_{log.epoch}.png")
        return True

    register_logger(Pictures, write)
    csv = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    mine = Pictures(str(tmp_path), name="mine")
    with pytest.warns(
        UserWarning, match=r"logs only the scalars to CSVLogger; .*`lightning_classim\.callback\.register_logger`"
    ):
        fit(pl, tmp_path, [csv, mine])
    assert "classim/n_groups" in (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert sorted(p.name for p in Path(mine.log_dir).glob("heatmap_*.png")) == ["heatmap_0.png", "heatmap_1.png"]


@pytest.mark.slow
def test_distance_to_a_reference_run_every_epoch(tmp_path):
    ref = fit(pl, tmp_path / "ref", False, save_dir=tmp_path / "ref" / "classim")
    new = fit(
        pl, tmp_path / "new", False, save_dir=tmp_path / "new" / "classim", reference=tmp_path / "ref" / "classim"
    )
    base = load_snapshot(list_snapshots(ref.save_dir)[-1]).result
    for entry, folder in zip(new.history, list_snapshots(new.save_dir)):
        this = load_snapshot(folder).result
        i, j = np.triu_indices(M, 1)
        assert entry["reference/matrix_corr"] == pytest.approx(
            np.corrcoef(base.similarity[i, j], this.similarity[i, j])[0, 1], abs=1e-6
        )
        assert entry["reference/group_ari"] == pytest.approx(adjusted_rand_score(base.groups, this.groups))
        expected = np.corrcoef(cophenet(base.linkage), cophenet(this.linkage))[0, 1]
        assert entry["reference/cophenetic_corr"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_checkpoint_resume_and_cli_in_the_lightning_namespace(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    train, val, names, _ = loaders(n_per_class=40, seed=0, batch_size=64, superclasses=3, subclasses=4, dim=16)
    cb = ClassSimilarityCallback(M, class_names=names, save_dir=tmp_path / "o")
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[cb, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(make_net(L), train, val)
    resumed = ClassSimilarityCallback(M, class_names=names, save_dir=tmp_path / "o")
    again = L.Trainer(max_epochs=3, logger=False, callbacks=[resumed], enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    again.fit(make_net(L), train, val, ckpt_path=str(tmp_path / "last.ckpt"))
    assert [h["epoch"] for h in resumed.history] == [2] and "drift" in resumed.history[0]
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_classim.ClassSimilarityCallback\n"
        "      init_args: {num_classes: 12, options: {method: average}}\n"
    )
    net_class = type(make_net(L))
    cli = LightningCLI(net_class, run=False, args=["--config", str(config)], save_config_callback=None)
    (found,) = [c for c in cli.trainer.callbacks if isinstance(c, ClassSimilarityCallback)]
    assert found.options.method == "average"


@pytest.mark.slow
def test_two_runs_under_a_tracker_without_version_folders_get_a_folder_each(tmp_path):
    from lightning_classim.runs import load_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = []
    for _ in range(2):  # two runs from the same directory (default_root_dir), as two scripts would be
        logger = L.loggers.MLFlowLogger(experiment_name="classim", tracking_uri=uri,
                                        artifact_location=str(tmp_path / "a"))  # fmt: skip
        made.append((fit(L, tmp_path, logger, explorer=False), logger.run_id))
    (first, id_a), (second, id_b) = made
    assert first.save_dir == tmp_path / "classim" / id_a and second.save_dir == tmp_path / "classim" / id_b
    for cb in (first, second):
        run = load_run(cb.save_dir)
        assert [s.epoch for s in run.snapshots] == [0, 1]  # never the other run's epochs beside them
        assert {s.extra["run_id"] for s in run.snapshots} == {run.info["run_id"]}
