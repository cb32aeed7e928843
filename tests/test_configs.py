"""Every config composes, and the groups hold what the README promises."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import PROJECT_ROOT
from visiontrain.cli.train import train
from visiontrain.runs.config import CONFIG_DIR

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_offer_the_documented_options():
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"tensorboard", "csv", "none"} <= set(options("logger"))
    assert {"mnist", "cifar10", "imagefolder"} <= set(options("data"))
    assert {"simple_cnn", "resnet", "torchvision"} <= set(options("model"))
    assert {"fdr", "overfit", "limit", "profiler"} <= set(options("debug"))
    assert {"sgd", "adamw"} <= set(options("model/optimizer"))
    assert {"onecycle", "cosine"} <= set(options("model/scheduler"))
    readme = (PROJECT_ROOT / "README.md").read_text()
    for group in (
        "data",
        "model",
        "model/optimizer",
        "model/scheduler",
        "trainer",
        "callbacks",
        "logger",
        "experiment",
        "debug",
        "hparams_search",
        "hydra/launcher",
        "finetune",
    ):
        for option in options(group):
            assert f"`{option}`" in readme, f"README does not list {group}={option}"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose_and_instantiate(make_config, experiment):
    cfg = make_config("train", [f"experiment={experiment}"])
    assert cfg.tags != ["dev"]
    if OmegaConf.select(cfg, "model.net.weights"):  # tests never download pretrained weights
        cfg = make_config("train", [f"experiment={experiment}", "model.net.weights=null"])
    model = instantiate(cfg.model)
    assert model.hparams.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs(make_config, trainer):
    cfg = make_config("train", [f"trainer={trainer}"])
    assert cfg.trainer.default_root_dir == cfg.paths.output_dir
    if trainer == "ddp":
        assert (cfg.trainer.strategy, cfg.trainer.sync_batchnorm) == ("ddp", True)
    if trainer in ("gpu", "ddp"):
        return  # not instantiable without a GPU
    trainer_obj = instantiate(cfg.trainer)
    assert trainer_obj.num_devices == (2 if trainer == "ddp_cpu" else 1)


def test_optimizers_and_schedulers_are_partials(make_config):
    import torch

    for optimizer in options("model/optimizer"):
        for scheduler in options("model/scheduler"):
            cfg = make_config("train", [f"model/optimizer={optimizer}", f"model/scheduler={scheduler}"])
            model = instantiate(cfg.model)
            opt = model.optimizer_factory(params=model.parameters())
            sched = model.scheduler_factory(optimizer=opt, total_steps=100)
            lrs = []
            for _ in range(100):
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
            peak = cfg.model.optimizer.lr
            assert max(lrs) == pytest.approx(peak, rel=0.05) and lrs[-1] < 0.05 * peak  # warm up, then anneal
            assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    cfg = make_config("train", ["~model/scheduler"])
    assert instantiate(cfg.model).scheduler_factory is None


def test_debug_overfit_drives_training_loss_down(make_config):
    cfg = make_config(
        "train",
        [
            "debug=overfit",
            "data.val_size=100",
            "data.batch_size=16",
            "trainer.max_epochs=15",
            "model.net.dropout=0.0",
            "test=false",
        ],
    )
    metrics = train(cfg)
    assert metrics["train/loss"] < 0.05 and metrics["train/acc"] == 1.0


def test_debug_profiler_writes_its_report(make_config):
    cfg = make_config("train", ["debug=profiler", "data.val_size=100", "data.batch_size=16", "test=false"])
    train(cfg)
    report = next(Path(cfg.paths.output_dir).glob("*profile*.txt"))
    assert "run_training_epoch" in report.read_text()


def test_debug_limit_runs_a_fraction(make_config):
    cfg = make_config("train", ["debug=limit", "data.val_size=100", "data.batch_size=8"])
    metrics = train(cfg)
    assert "test/acc" in metrics


@pytest.mark.parametrize("logger", ["none", "csv"])
def test_other_loggers(make_config, logger):
    cfg = make_config("train", [f"logger={logger}", "data.val_size=100", "trainer.max_epochs=1", "test=false"])
    metrics = train(cfg)
    assert "val/acc" in metrics and (Path(cfg.paths.output_dir) / "metrics.json").is_file()
    assert (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").is_file() == (logger == "csv")
