"""What a run leaves behind: metrics.json, and the hyperparameters with final metrics in TensorBoard's HParams."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning import Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from visiontrain.runs.config import choice
from visiontrain.runs.loggers import config_params, is_tracker

log = logging.getLogger("visiontrain")


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The handful of choices that tell runs apart, for TensorBoard's HParams table (config.yaml has the rest)."""

    def pick(key: str) -> Any:
        value = OmegaConf.select(cfg, key, default=None)
        return value if isinstance(value, (bool, int, float, str)) else (None if value is None else str(value))

    scheduler = OmegaConf.select(cfg, "model.scheduler._target_", default=None)
    chosen = {
        "model": choice(cfg, "model"),
        "data": choice(cfg, "data"),
        "experiment": choice(cfg, "experiment"),
        "lr": pick("model.optimizer.lr"),
        "optimizer": str(OmegaConf.select(cfg, "model.optimizer._target_", default="")).rsplit(".", 1)[-1],
        "scheduler": str(scheduler).rsplit(".", 1)[-1] if scheduler else "constant",
        "batch_size": pick("data.batch_size"),
        "max_epochs": pick("trainer.max_epochs"),
        "precision": pick("trainer.precision"),
        "augment": pick("data.augment"),
        "seed": pick("seed"),
        "init_from": pick("init_from"),
    }
    return {key: value for key, value in chosen.items() if value not in (None, "", "-")}


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    values = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[name] = float(value)
    return values


@rank_zero_only
def record_results(cfg: DictConfig, trainer: Trainer, metrics: dict[str, float], loggers: list[Logger]) -> None:
    """Write ``metrics.json`` and the TensorBoard HParams entry (hyperparameters with final metrics)."""
    checkpoint = trainer.checkpoint_callback
    record: dict[str, Any] = dict(sorted(metrics.items()))
    record["best_model_path"] = getattr(checkpoint, "best_model_path", "") or None
    path = Path(cfg.paths.output_dir) / "metrics.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("final metrics written to %s", path)
    if not metrics:
        return
    from torch.utils.tensorboard.summary import hparams

    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        # one HParams session per run, written at the end so it holds the final metrics; the metric
        # values themselves are read by TensorBoard from the scalar tags of the same name
        writer = logger.experiment._get_file_writer()
        headline = {name: value for name, value in metrics.items() if name.count("/") == 1}  # not per class
        for summary in hparams(hyperparameters(cfg), headline):
            writer.add_summary(summary)
        logger.experiment.flush()


def log_config_hyperparameters(cfg: DictConfig, loggers: list[Logger]) -> None:
    """Save the experiment-defining config with each logger: the handful of ``hyperparameters`` (``hparams.yaml``
    for TensorBoard/CSV); the experiment trackers (MLflow, W&B) take the whole resolved config besides, where
    runs are compared by any config value."""
    chosen = hyperparameters(cfg)
    for logger in loggers:
        if is_tracker(logger):
            logger.log_hyperparams(config_params(cfg, chosen))
        else:
            logger.log_hyperparams(chosen)
