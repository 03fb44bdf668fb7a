"""The built-in writers, one per tracker, for the loggers of both Lightning namespaces.

Each logs through the logger's public API where it has one (``log_metrics`` applies the logger's own ``prefix`` and
step key); pictures, tables and text go where the tracker shows them:

| tracker | pictures | group and pairs tables | run parameters |
| --- | --- | --- | --- |
| TensorBoard | ``add_image`` at the step | ``add_text`` (markdown) | ``log_hyperparams`` |
| Weights & Biases | ``wandb.Image`` | ``wandb.Table`` (and a ``wandb.Histogram``) | ``log_hyperparams`` (config) |
| MLflow | ``log_image(key, step)`` (step slider) | ``log_table`` JSON, markdown | params; the files as artifacts |
| Comet | ``log_image(step)`` | ``log_table`` CSV, ``log_text`` | ``log_hyperparams`` |

The epoch's explorer page (``explorer.html``) goes to W&B as ``wandb.Html``, to MLflow among the epoch's files
(artifacts) and to Comet as an asset; TensorBoard shows it in the plugin's "Class similarity" tab.
| DVCLive | ``log_image`` per epoch | markdown text file (both tables) | ``log_hyperparams`` |

TensorBoard and MLflow images are logged past ``log_metrics``, so they take the logger's ``prefix`` (stored by
Lightning's loggers as ``_prefix``) to match the scalars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_classim._lightning import logger_classes
from lightning_classim.callback._loggers import EpochLog, Panel, register_logger

__all__ = ["logger_prefix", "register_built_in"]

_REGISTERED = False


def logger_prefix(logger: Any) -> str:
    """The logger's own prefix with its join character (``"train-"``), as its ``log_metrics`` puts it on keys."""
    prefix = getattr(logger, "_prefix", "") or ""
    return f"{prefix}{getattr(logger, 'LOGGER_JOIN_CHAR', '-')}" if prefix else ""


def _columns(panel: Panel) -> dict[str, list[Any]]:
    return {name: [row[i] for row in panel.table_rows] for i, name in enumerate(panel.table_columns)}


def _tensorboard(logger: Any, log: EpochLog) -> bool:
    writer = logger.experiment
    prefix = logger_prefix(logger)
    for panel in log.panels:
        if panel.image is not None:
            writer.add_image(prefix + log.tag(panel, "heatmap"), panel.image, log.step, dataformats="HWC")
        writer.add_text(prefix + log.tag(panel, "groups"), panel.markdown, log.step)
        writer.add_text(prefix + log.tag(panel, "pairs"), panel.pairs_markdown, log.step)
        if panel.histogram is not None and panel.histogram.size:
            writer.add_histogram(prefix + log.tag(panel, "similarity"), panel.histogram, log.step)
    logger.log_metrics(log.tagged_scalars(), log.step)
    writer.flush()
    return True


def _wandb(logger: Any, log: EpochLog) -> bool:
    import wandb

    data: dict[str, Any] = dict(log.tagged_scalars())
    for panel in log.panels:
        if panel.image is not None:
            data[log.tag(panel, "heatmap")] = wandb.Image(panel.image, caption=f"epoch {log.epoch}")
        data[log.tag(panel, "groups")] = wandb.Table(columns=list(panel.table_columns), data=list(panel.table_rows))
        data[log.tag(panel, "pairs")] = wandb.Table(columns=list(panel.pair_columns), data=list(panel.pair_rows))
        if panel.histogram is not None and panel.histogram.size:
            data[log.tag(panel, "similarity")] = wandb.Histogram(panel.histogram.tolist())
    page = _explorer(log)
    if page is not None:
        data[f"{log.prefix}/explorer{log.suffix}"] = wandb.Html(page.read_text(encoding="utf-8"), inject=False)
    logger.log_metrics(data, log.step)  # one W&B step; the logger applies its prefix and step key
    return True


def _mlflow(logger: Any, log: EpochLog) -> bool:
    client, run_id = logger.experiment, logger.run_id
    prefix = logger_prefix(logger)
    for panel in log.panels:
        key = prefix + log.tag(panel, "heatmap")
        if panel.image is not None:
            client.log_image(run_id, panel.image, key=key, step=log.step)
        where = prefix + log.tag(panel, "groups")
        client.log_table(run_id, data=_columns(panel), artifact_file=f"{where}/epoch={log.epoch:04d}.json")
        client.log_text(run_id, panel.markdown, artifact_file=f"{where}/epoch={log.epoch:04d}.md")
        pairs = {name: [row[i] for row in panel.pair_rows] for i, name in enumerate(panel.pair_columns)}
        client.log_table(
            run_id, data=pairs, artifact_file=f"{prefix}{log.tag(panel, 'pairs')}/epoch={log.epoch:04d}.json"
        )
    logger.log_metrics(log.tagged_scalars(), log.step)
    for folder in log.folders:  # the epoch's files, as the command line reads them
        client.log_artifacts(run_id, str(folder), artifact_path=f"{prefix}{log.prefix}/files/{_relative(folder)}")
    return True


def _explorer(log: EpochLog) -> Path | None:
    """The epoch's explorer page, when the callback wrote one."""
    if not log.folders:
        return None
    page = log.folders[0] / "explorer.html"
    return page if page.is_file() else None


def _relative(folder: Path) -> str:
    """``epoch=0003-step=000120``, or ``sources/<tag>/epoch=...`` for another source's folder."""
    parts = folder.parts
    return "/".join(parts[parts.index("sources") :]) if "sources" in parts else folder.name


def _comet(logger: Any, log: EpochLog) -> bool:
    experiment = logger.experiment
    prefix = logger_prefix(logger)
    for panel in log.panels:
        if panel.image is not None:
            experiment.log_image(panel.image, name=prefix + log.tag(panel, "heatmap"), step=log.step)
        table = prefix + log.tag(panel, "groups")
        experiment.log_table(f"{table.replace('/', '_')}_epoch={log.epoch:04d}.csv", tabular_data=panel.table_rows,
                             headers=list(panel.table_columns))  # fmt: skip
        experiment.log_text(panel.markdown, step=log.step, metadata={"tag": table, "epoch": log.epoch})
        pairs = prefix + log.tag(panel, "pairs")
        if panel.path == "" and (page := _explorer(log)) is not None:
            experiment.log_asset(str(page), file_name=f"{table.replace('/', '_').replace('groups', 'explorer')}"
                                 f"_epoch={log.epoch:04d}.html", step=log.step)  # fmt: skip
        if panel.pair_rows:  # Comet refuses an empty table
            experiment.log_table(f"{pairs.replace('/', '_')}_epoch={log.epoch:04d}.csv",
                                 tabular_data=panel.pair_rows, headers=list(panel.pair_columns))  # fmt: skip
    logger.log_metrics(log.tagged_scalars(), log.step)
    return True


def _dvclive(logger: Any, log: EpochLog) -> bool:
    live = logger.experiment
    for panel in log.panels:
        base = log.tag(panel, "heatmap")
        if panel.image is not None:
            live.log_image(f"{base}/epoch={log.epoch:04d}.png", panel.image)
        text = Path(live.dir) / "classim" / f"{log.tag(panel, 'groups')}_epoch={log.epoch:04d}.md"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text(panel.markdown)
    logger.log_metrics(log.tagged_scalars(), log.step)
    return True


def register_built_in() -> None:
    """Register the writers of the trackers' loggers of both namespaces (once; a user's registration stays)."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    for name, writer in (("TensorBoardLogger", _tensorboard), ("WandbLogger", _wandb), ("MLFlowLogger", _mlflow),
                         ("CometLogger", _comet)):  # fmt: skip
        for cls in logger_classes(name):
            register_logger(cls, writer, replace=False)
    try:
        from dvclive.lightning import DVCLiveLogger
    except Exception:  # dvclive is not installed
        return
    register_logger(DVCLiveLogger, _dvclive, replace=False)
