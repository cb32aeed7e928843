"""Test a checkpoint: ``python eval.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt data=cifar10``.

The model config travels inside visiontrain checkpoints, so ``model=`` is only needed to override it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from visiontrain import artifact
from visiontrain.cli import checks
from visiontrain.errors import UserError
from visiontrain.runs import config, user_errors

log = logging.getLogger("visiontrain")


def configs_from_checkpoint(cfg: DictConfig, info: artifact.ArtifactInfo | None) -> None:
    """Use the checkpoint's own ``model`` and ``data`` configs unless ``model=`` / ``data=`` picks another option;
    ``model.*=`` / ``data.*=`` overrides typed on the command line still apply on top of the stored ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        typed = list(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside a Hydra app: nothing was overridden
        typed = []
    overrides = OverridesParser.create().parse_overrides(typed)
    stored_configs = info.configs if info is not None else {}
    for section in ("model", "data"):
        stored = stored_configs.get(section)
        if stored is None or any(o.key_or_group == section for o in overrides):
            continue
        with open_dict(cfg):
            cfg[section] = OmegaConf.create(stored)
            for override in overrides:
                if override.key_or_group.startswith(f"{section}."):
                    if override.is_delete():
                        parent, _, leaf = override.key_or_group.rpartition(".")
                        OmegaConf.select(cfg, parent).pop(leaf, None)
                    else:
                        OmegaConf.update(cfg, override.key_or_group, override.value(), force_add=True)
        log.info("%s config taken from the checkpoint", section)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint: its own model and data configs (``configs_from_checkpoint``), rebuilt without any
    pretrained weights, its weights loaded into the model; returns the test metrics (also metrics.json). The file
    is read once, here, and what it holds is handed on."""
    # torch and the rest load here, once the command line is known to be right (see cli/train.py)
    from visiontrain.callbacks.checkpoint_state import SplitAgainstCheckpoint
    from visiontrain.models.weights import without_pretrained
    from visiontrain.runs import console, records

    if not cfg.get("ckpt_path"):
        raise UserError("eval.py needs ckpt_path=<path to a .ckpt file>.")
    with open_dict(cfg):  # a run folder given: its best checkpoint
        cfg.ckpt_path = str(artifact.checkpoint_file(cfg.ckpt_path))
    if not Path(cfg.ckpt_path).is_file():
        raise UserError(f"checkpoint {cfg.ckpt_path} does not exist.")
    checkpoint = artifact.load_checkpoint(cfg.ckpt_path, f"ckpt_path={cfg.ckpt_path}")
    configs_from_checkpoint(cfg, checkpoint.info)
    config.check_values(cfg)
    with open_dict(cfg):  # the checkpoint's weights overwrite any pretrained ones: none are downloaded or read
        cfg.model = OmegaConf.create(without_pretrained(OmegaConf.to_container(cfg.model, resolve=False)))
    config.prepare_run(cfg)

    datamodule = config.instantiate_data(cfg)
    config.save_config(cfg)
    model = instantiate(cfg.model)
    # eval.py's tta= (conf/eval.yaml) replaces model.tta, the test-time augmentation the training run tested with
    if cfg.get("tta") is not None:
        model.set_tta(cfg.tta)
    if model.hparams.get("tta", "none") != model.tta:
        log.info("testing with tta=%s (the training run tested with model.tta=%s)", model.tta, model.hparams.tta)
    model.check_data(datamodule.spec)
    loggers = config.instantiate_group(cfg.get("logger"))
    # one line on whether the test split is the one the checkpoint was tested on (its split manifest)
    stored_splits = checkpoint.info.splits if checkpoint.info is not None else {}
    callbacks = [console.ProgressBar(), SplitAgainstCheckpoint(cfg.ckpt_path, stored_splits)]
    trainer = config.instantiate_trainer(cfg, logger=loggers or False, callbacks=callbacks)
    records.log_config_hyperparameters(cfg, trainer.loggers)

    try:  # what trainer.test(ckpt_path=...) would do, without reading the file again
        model.on_load_checkpoint(checkpoint.content)
        model.load_state_dict(checkpoint.content["state_dict"])
    except RuntimeError as err:
        if "loading state_dict" not in str(err):
            raise
        first = next(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        raise UserError(
            f"checkpoint {cfg.ckpt_path} does not fit the model config ({first.rstrip('.')}); "
            "leave out the model overrides to use the config stored in the checkpoint."
        ) from err
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = records.scalar_metrics(trainer.callback_metrics)
    console.log_test_metrics(metrics, str(cfg.ckpt_path))
    records.record_results(cfg, trainer, metrics, trainer.loggers)
    method = OmegaConf.select(cfg, "explain.method")
    if method and model.task == "classification":  # what the model looked at, on right and wrong test images
        from visiontrain.serving import explain

        try:
            explain.write_test_grid(trainer, model, datamodule, method, OmegaConf.select(cfg, "explain.layer"))
        except UserError:
            raise
        except Exception as err:  # a drawing is an extra: the test's figures are written already
            log.warning("plots/explanations.png not drawn (%s: %s)", type(err).__name__, err)
    return metrics


@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="eval")
@user_errors.report_user_errors
def run(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """The command: mistyped keys and group options are refused before Hydra starts (visiontrain.cli.checks)."""
    checks.checked_main("eval", run)


if __name__ == "__main__":
    main()
