"""Launcher configs: the SLURM one composes into submitit's launcher with our cluster settings (no cluster here)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from visiontrain.runtime import CONFIG_DIR


def test_slurm_launcher_config_composes():
    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trainer=ddp", "trainer.devices=4"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 4 and launcher["mem_gb"] == 32
    assert cfg.hydra.launcher.tasks_per_node == 4  # srun starts one process per GPU
    assert launcher["additional_parameters"] == {"requeue": True} and launcher["max_num_timeout"] == 3
    assert launcher["timeout_min"] > 0 and launcher["signal_delay_s"] > 0
