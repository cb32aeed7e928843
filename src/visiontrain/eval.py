"""Test a checkpoint: ``python eval.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt data=cifar10``.

The model config travels inside visiontrain checkpoints, so ``model=`` is only needed to override it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from visiontrain import runtime
from visiontrain.callbacks import CONFIG_KEY
from visiontrain.errors import UserError
from visiontrain.models.weights import without_pretrained
from visiontrain.runtime import CONFIG_DIR

log = logging.getLogger("visiontrain")


def model_config_from_checkpoint(cfg: DictConfig) -> None:
    """Use the checkpoint's own model config unless ``model=`` / ``model.*=`` was given on the command line."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # composed outside a Hydra app (tests): nothing was overridden
        overrides = []
    if any(o.lstrip("+~").startswith("model") for o in overrides):
        return
    checkpoint = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    stored = checkpoint.get(CONFIG_KEY, {}).get("model")
    if stored is not None:
        with open_dict(cfg):
            cfg.model = OmegaConf.create(stored)
        log.info("model config taken from the checkpoint")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if not cfg.get("ckpt_path"):
        raise UserError("eval.py needs ckpt_path=<path to a .ckpt file>.")
    if not Path(cfg.ckpt_path).is_file():
        raise UserError(f"checkpoint {cfg.ckpt_path} does not exist.")
    model_config_from_checkpoint(cfg)
    with open_dict(cfg):  # the checkpoint's weights overwrite any pretrained ones: none are downloaded or read
        cfg.model = OmegaConf.create(without_pretrained(OmegaConf.to_container(cfg.model, resolve=False)))
    runtime.prepare_run(cfg)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    model.check_data_compatibility(datamodule.input_shape, datamodule.num_classes, datamodule.name)
    loggers = runtime.instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, logger=loggers or False)
    runtime.log_config_hyperparameters(cfg, trainer.loggers)

    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except RuntimeError as err:
        if "loading state_dict" not in str(err):
            raise
        first = next(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        raise UserError(
            f"checkpoint {cfg.ckpt_path} does not fit the model config ({first.rstrip('.')}); "
            "leave out the model overrides to use the config stored in the checkpoint."
        ) from err
    metrics = runtime.scalar_metrics(trainer.callback_metrics)
    runtime.record_results(cfg, trainer, metrics, trainer.loggers)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@runtime.report_user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
