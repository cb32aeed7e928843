"""The composed config and what every entry point does with it first: where the configs live, composing one
from Python, refusing impossible values, seeding, the datamodule before the model (``instantiate_data``),
saving config.yaml, instantiating a callbacks/logger group."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from visiontrain.errors import UserError
from visiontrain.runs import folders  # noqa: F401 (folders registers the resolvers conf/hydra uses)

log = logging.getLogger("visiontrain")


def config_dir() -> Path:
    """The configs: a wheel's copy inside the package (visiontrain/conf, copied there by setup.py's build step), else
    conf/ at the root of the source tree this package runs from (a checkout, an editable install)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parents[1] / "conf"


CONFIG_DIR = str(config_dir())


def choice(cfg: DictConfig, group: str) -> str:
    """The option picked for a config group (``mnist`` for ``data``), else the name of its ``_target_``."""
    from hydra.core.hydra_config import HydraConfig

    try:
        picked = HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # no Hydra run (a config built by hand)
        picked = None
    if picked:
        return str(picked)
    target = str(OmegaConf.select(cfg, f"{group}._target_", default="") or "")
    return target.rsplit(".", 1)[-1] or "-"


def compose_config(config_name: str, overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose a config from Python (tests, benchmarks, notebooks) as the command line would.

    Hydra's runtime fields are filled in, so ``${hydra:...}`` interpolations resolve and the run
    writes into ``output_dir``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def optimized_metrics(cfg: DictConfig) -> list[str]:
    """``optimized_metric`` as a list: the metric a sweeper optimises, or one per objective of a multi-objective
    study (``optimized_metric: [val/acc_best, model/parameters]``); [] when there is none."""
    metric = OmegaConf.select(cfg, "optimized_metric", default=None, throw_on_resolution_failure=False)
    if not metric:
        return []
    return [str(m) for m in metric] if OmegaConf.is_list(metric) or isinstance(metric, list) else [str(metric)]


def check_values(cfg: DictConfig) -> None:
    """Refuse, in one sentence, values that would otherwise fail deep inside the DataLoader or the Trainer."""
    for key in ("data.batch_size", "data.eval_batch_size"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{key}={value}: give a whole number of images per batch, 1 or more.")
    workers = OmegaConf.select(cfg, "data.num_workers", default=None)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise UserError(f"data.num_workers={workers}: give 0 (load in the main process) or more worker processes.")
    for key in ("data.val_size", "data.test_size"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UserError(f"{key}={value}: give a whole number of images, 0 or more.")
    fraction = OmegaConf.select(cfg, "data.val_fraction", default=None)
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1
    ):
        raise UserError(
            f"data.val_fraction={fraction}: give the share of training images to validate on, 0 to below 1."
        )
    lr = OmegaConf.select(cfg, "model.optimizer.lr", default=None)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
        raise UserError(f"model.optimizer.lr={lr}: give a learning rate above 0 (e.g. 0.01).")
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if epochs is not None and (not isinstance(epochs, int) or epochs < -1):
        raise UserError(f"trainer.max_epochs={epochs}: give a number of epochs, 1 or more (-1: no limit).")


def prepare_run(cfg: DictConfig) -> None:
    """Seed, silence known-noisy warnings if asked, set the float32 matmul precision."""
    import torch

    from visiontrain.runs import console

    extras = cfg.get("extras") or {}
    console.quiet_third_party()
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if cfg.get("seed") is not None:
        from lightning import seed_everything

        seed_everything(cfg.seed, workers=True)
    if extras.get("matmul_precision"):
        torch.set_float32_matmul_precision(extras.matmul_precision)


def instantiate_data(cfg: DictConfig) -> Any:
    """The datamodule. A ``data.num_classes`` left null (the class folders, a category list, ... tell it) is filled
    in here from its ``spec``, before the model config's ``${data.num_classes}`` is read; a number given is checked
    against the data when the spec is read next (after the model is built, so weight-loading errors come first)."""
    datamodule = instantiate(cfg.data)
    if cfg.data.get("num_classes") is None:
        with open_dict(cfg):
            cfg.data.num_classes = datamodule.spec.num_classes
    return datamodule


def instantiate_trainer(cfg: DictConfig, **kwargs: Any) -> Any:
    """The Trainer ``cfg.trainer`` describes; one it cannot build (no GPU for trainer=gpu, an unknown strategy or
    precision) is one sentence naming the options and what this machine offers."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(cfg.trainer, **kwargs)
    except Exception as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if not isinstance(cause, (MisconfigurationException, ValueError)):
            raise
        reason = str(cause).strip().splitlines()[0].rstrip(".") if str(cause).strip() else type(cause).__name__
        asked = ", ".join(
            f"trainer.{key}={OmegaConf.select(cfg, f'trainer.{key}')}"
            for key in ("accelerator", "devices", "strategy", "precision")
            if OmegaConf.select(cfg, f"trainer.{key}", default=None) is not None
        )
        here = accelerators()
        raise UserError(f"the Trainer cannot be built with {asked} ({reason}); this machine has {here}.") from None


def accelerators() -> str:
    """What this machine offers to train on, for a sentence: "no GPU (trainer=cpu)", "2 CUDA GPUs", ..."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} CUDA GPU(s) (trainer=gpu)"
    if torch.backends.mps.is_available():
        return "an Apple GPU (trainer.accelerator=mps)"
    return f"no GPU, {os.cpu_count()} CPU cores (trainer=cpu, or trainer=ddp_cpu for several processes)"


def save_config(cfg: DictConfig) -> None:
    """``<run dir>/config.yaml``: the composed config with every interpolation resolved, what this run really
    used (printed too with ``extras.print_config``)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    if (cfg.get("extras") or {}).get("print_config"):
        print_config(cfg)


# Lightning's short precision names and the full ones its Trainer reports
PRECISION_NAMES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true", "half": "16-true"}


def record_precision(cfg: DictConfig, trainer: Any) -> None:
    """The precision that runs, in config.yaml: Lightning may run another than asked (16-mixed on a CPU runs as
    bf16-mixed), and the record says what ran."""
    asked = str(OmegaConf.select(cfg, "trainer.precision", default="32"))
    ran = str(trainer.precision)
    if PRECISION_NAMES.get(asked, asked) == ran:
        return
    log.warning("trainer.precision=%s runs as %s on this machine; config.yaml records %s", asked, ran, ran)
    with open_dict(cfg):
        cfg.trainer.precision = ran
    save_config(cfg)


def print_config(cfg: DictConfig) -> None:
    """The config as a tree on the console (rank zero's, as save_config calls it)."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for section in ("data", "model", "trainer", "callbacks", "logger", "paths"):
        if section in cfg:
            body = OmegaConf.to_yaml(cfg[section], resolve=True)
            tree.add(section).add(rich.syntax.Syntax(body, "yaml", theme="ansi_dark"))
    rest = {
        k: v
        for k, v in cfg.items()
        if k not in ("data", "model", "trainer", "callbacks", "logger", "paths", "extras", "hydra")
    }
    tree.add("run").add(rich.syntax.Syntax(OmegaConf.to_yaml(OmegaConf.create(rest)), "yaml", theme="ansi_dark"))
    rich.print(tree)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``callbacks`` / ``logger`` group (entries set to null are skipped)."""
    if not cfg:
        return []
    return [instantiate(entry) for entry in cfg.values() if entry is not None and "_target_" in entry]
