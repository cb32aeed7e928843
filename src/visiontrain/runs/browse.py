"""``python train.py data=... debug=browse``: look at the data before training.

No model is built and nothing is trained. The datamodule is set up as for training; the first training samples
are fetched as training would receive them and drawn with their labels (class names, masks, boxes), the labels of
every split are counted (visiontrain.data.label_stats) and drawn; the figures go to ``<run dir>/plots/`` and
TensorBoard, the numbers to ``<run dir>/plots/label_stats.json`` (visiontrain.plots.data draws them).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from visiontrain import kinds
from visiontrain.data.label_stats import label_stats
from visiontrain.errors import UserError
from visiontrain.plots import data as figures
from visiontrain.plots.figures import PLOTS_FOLDER
from visiontrain.runs import config

log = logging.getLogger("visiontrain")

STATS_FILE = "label_stats.json"


def browse(cfg: DictConfig, datamodule: Any) -> dict[str, float]:
    """Write the run's config.yaml, the sample grid and the label statistics (figures and JSON); returns no metrics.
    ``cfg.browse``: ``images`` (how many training samples the grid shows), ``max_masks`` (segmentation: masks
    read per split for the statistics, null = all)."""
    options = cfg.browse if isinstance(cfg.browse, DictConfig) else OmegaConf.create()
    count, max_masks = options.get("images", 32), options.get("max_masks", 5000)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"browse.images={count}: give the number of training samples to show, 1 or more.")
    if max_masks is not None and (isinstance(max_masks, bool) or not isinstance(max_masks, int) or max_masks < 1):
        raise UserError(f"browse.max_masks={max_masks}: give the number of masks to read per split, or null for all.")
    save_config(cfg)
    run_dir = Path(cfg.paths.output_dir)

    start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")
    spec = datamodule.spec
    stats = label_stats(datamodule, max_masks)
    counted = time.perf_counter()
    images, targets = training_samples(datamodule, count)
    fetched = time.perf_counter()

    loggers = config.instantiate_group(cfg.get("logger"))
    writers = [logger.experiment for logger in loggers if hasattr(logger.experiment, "add_image")]
    drawn = [("training_samples", sample_grid(cfg, datamodule, images, targets)), *stats_figures(stats)]
    for name, fig in drawn:
        figures.save_figure(run_dir, writers, name, fig, f"browse/{name}")
    (run_dir / PLOTS_FOLDER / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
    for logger in loggers:
        logger.finalize("success")

    log.info(
        "%s: set up and the labels of %s images counted in %.1f s, %d training samples fetched in %.1f s, "
        "%d figures drawn in %.1f s",
        spec.name,
        " / ".join(f"{split['images']} {name}" for name, split in stats["splits"].items()),
        counted - start,
        len(images),
        fetched - counted,
        len(drawn),
        time.perf_counter() - fetched,
    )
    where = " and in TensorBoard under browse/" if writers else " (no TensorBoard logger: files only)"
    log.info("debug=browse: figures and %s in %s%s; nothing was trained", STATS_FILE, run_dir / PLOTS_FOLDER, where)
    return {}


def save_config(cfg: DictConfig) -> None:
    """config.yaml as every run writes it. No model is built here, and the default one need not fit the data (the
    default simple_cnn reads ``data.num_channels``, which detection configs lack): a model section that does not
    resolve is saved as null instead of stopping a run that never uses it."""
    try:
        OmegaConf.to_container(cfg.model, resolve=True)
    except InterpolationResolutionError as err:
        log.info(
            "the model config does not fit this data (%s: %s), so config.yaml holds model: null; nothing here "
            "builds a model",
            err.full_key,
            str(err.msg).splitlines()[0],
        )
        with open_dict(cfg):
            cfg.model = None
    config.save_config(cfg)


@torch.no_grad()
def training_samples(datamodule: Any, count: int) -> tuple[list[torch.Tensor], list[Any]]:
    """The first ``count`` samples (images and targets) of the training loader, passed through the datamodule's batch
    hooks with a Trainer in its training stage attached: what ``training_step`` would receive, augmentation done on
    the device after transfer (in-memory data) included."""
    from lightning import Trainer

    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.training = True
    attached, datamodule.trainer = datamodule.trainer, trainer
    images: list[torch.Tensor] = []
    targets: list[Any] = []
    try:
        for batch in datamodule.train_dataloader():
            batch = datamodule.on_before_batch_transfer(batch, 0)
            batch = datamodule.transfer_batch_to_device(batch, torch.device("cpu"), 0)
            batch_images, batch_targets = datamodule.on_after_batch_transfer(batch, 0)
            taken = list(batch_images)[: count - len(images)]
            images += taken
            targets += list(batch_targets)[: len(taken)]
            if len(images) >= count:
                break
    finally:
        datamodule.trainer = attached
    return images, targets


def sample_grid(cfg: DictConfig, datamodule: Any, images: list[torch.Tensor], targets: list[Any]):
    """The samples denormalised with the datamodule's mean/std (if it normalises), drawn for the data's task."""
    spec = datamodule.spec
    preprocessing = spec.preprocessing
    if "mean" in preprocessing:
        mean = torch.tensor(preprocessing["mean"]).view(-1, 1, 1)
        std = torch.tensor(preprocessing["std"]).view(-1, 1, 1)
        images = [image.float().cpu() * std + mean for image in images]
    title = f"{spec.name}: the first {len(images)} training samples as training gets them, augmentation included "
    title += f"(seed {cfg.get('seed')})"
    if OmegaConf.select(cfg, "model.mixup_alpha", default=0) or OmegaConf.select(cfg, "model.cutmix_alpha", default=0):
        title += ", before the model's MixUp/CutMix (debug=augment shows them)"
    return kinds.of(spec.task).part("sample_grid")(images, targets, datamodule, title)


def stats_figures(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(name, figure)`` for each statistic of the data's task."""
    draw = kinds.of(stats["task"]).part("statistics_figures")
    return draw(stats["data"], stats["class_names"], stats["splits"])
