"""Launchers: joblib and submitit_local run jobs here; the SLURM config composes into submitit's launcher
with our cluster settings (no cluster here)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import run_cli
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


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_local_launchers_run_two_jobs_in_their_own_directories(tmp_path, datasets, launcher):
    args = ["-m", f"hydra/launcher={launcher}", "seed=1,2", "data.val_size=100", "trainer.max_epochs=1",
            "extras.print_config=false", "callbacks.progress_bar=null", "test=false", "logger=csv"]  # fmt: skip
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job in jobs:
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert 0 < metrics["val/acc_best"] <= 1
    assert (sweep / "summary.csv").read_text().count("\n") == 3  # header + one row per job
