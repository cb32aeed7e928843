"""Launchers: joblib and submitit_local run jobs here; the SLURM config composes into submitit's launcher
with our cluster settings (no cluster here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning import Callback
from omegaconf import OmegaConf

from tests.conftest import PROJECT_ROOT, QUIET, run_cli
from tests.test_multinode import requeue_signal, sbatch_script
from visiontrain.cli.train import train
from visiontrain.runs.config import CONFIG_DIR


def test_slurm_launcher_config_composes():
    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trainer=ddp", "trainer.devices=4"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 4 and launcher["mem_gb"] == 32
    assert cfg.hydra.launcher.tasks_per_node == 4  # srun starts one process per GPU
    # requeued, after the signal Lightning saves its checkpoint on (test_multinode.py: the sbatch script)
    assert OmegaConf.to_container(cfg.hydra.launcher.additional_parameters, resolve=True) == {
        "requeue": True, "signal": "USR1@120"
    }  # fmt: skip
    assert launcher["timeout_min"] > 0 and launcher["signal_delay_s"] > 0


@pytest.mark.process  # each launcher starts its jobs as processes of its own
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


class PauseAtStep(Callback):
    """Holds training still once ``step`` optimizer steps are done (mid-epoch), saying so in the file ``marker``: a
    test signals the process there, as SLURM does before the time limit, and then kills it as SLURM's requeue does."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            time.sleep(600)  # a signal's handler runs meanwhile


class StartEpochProbe(Callback):
    """Records the epoch and the training step each fit starts at."""

    started_at: list[int] = []
    started_at_step: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        StartEpochProbe.started_at.append(trainer.current_epoch)
        StartEpochProbe.started_at_step.append(trainer.global_step)


SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242",
              "SLURM_JOB_NAME": "visiontrain", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


@pytest.mark.process
def test_slurm_requeue_signal_saves_a_checkpoint_the_requeued_job_continues_from(
    tmp_path, datasets, make_config, monkeypatch
):
    """Before the time limit SLURM sends the signal the sbatch script asks for (conf/hydra/launcher/slurm.yaml);
    Lightning's SLURM environment (auto-requeue) saves ``hpc_ckpt_<n>.ckpt`` in the run directory and asks
    ``scontrol`` to requeue (absent here). The requeued job runs again in the same directory and continues from that
    checkpoint, saved mid-epoch: the steps after the epoch's ``last.ckpt`` are not lost."""
    with monkeypatch.context() as patched:  # (its stand-in srun goes with it)
        aligned = requeue_signal(sbatch_script(tmp_path, patched, []))
    run_dir, paused = tmp_path / "run", tmp_path / "paused"
    args = ["data.val_size=100", "data.batch_size=16", "trainer.max_epochs=2", "callbacks.learning_curves=null",
            "test=false"]  # fmt: skip
    # 31 steps an epoch (500 images, whole batches): paused in the second one, after last.ckpt of the first
    pause = ["+callbacks.pause._target_=tests.test_launchers.PauseAtStep", "+callbacks.pause.step=40",
             f"+callbacks.pause.marker={paused}"]  # fmt: skip
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), *QUIET, "logger=tensorboard", "trainer.accelerator=cpu",
               f"hydra.run.dir={run_dir}", *args, *pause]  # fmt: skip
    env = {**os.environ, **SLURM_TASK, "DATA_DIR": str(datasets), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 300
        while not paused.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(aligned)
        deadline = time.time() + 60
        while not list(run_dir.glob("hpc_ckpt_*.ckpt")) and time.time() < deadline:
            time.sleep(0.5)
    finally:
        proc.kill()
        stderr = proc.communicate()[1]
    assert "SLURM auto-requeueing enabled" in stderr and "Requeuing SLURM job 4242" in stderr
    (saved,) = list(run_dir.glob("hpc_ckpt_*.ckpt"))
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 40 and "state_dict" in checkpoint
    steps_per_epoch = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert steps_per_epoch < 40

    # requeued: the same job config in the same folder, SLURM_RESTART_COUNT set
    for key, value in {**SLURM_TASK, "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(key, value)
    train(make_config("train", [*args, "+callbacks.probe._target_=tests.test_launchers.StartEpochProbe"]))
    assert StartEpochProbe.started_at_step[-1] == 40  # from hpc_ckpt_1.ckpt, not from last.ckpt's epoch end
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (1, 2 * steps_per_epoch)


def test_requeued_slurm_job_continues_from_its_own_last_checkpoint(make_config, monkeypatch):
    # the first attempt: stopped after epoch 0 of 2 (as if the job had been preempted there)
    stop = ["+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping", "+callbacks.stop.monitor=val/acc",
            "+callbacks.stop.mode=max", "+callbacks.stop.stopping_threshold=0.0"]  # fmt: skip
    common = ["data.val_size=100", "data.batch_size=32", "trainer.max_epochs=2", "test=false"]
    train(make_config("train", common + stop))
    probe = ["+callbacks.probe._target_=tests.test_launchers.StartEpochProbe"]
    cfg = make_config("train", common + probe)  # the same job config and folder, as submitit re-runs it
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    steps_per_epoch = torch.load(last, weights_only=True)["global_step"]
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1", "SLURM_NTASKS": "1",
                       "SLURM_JOB_NAME": "visiontrain", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    train(cfg)
    assert StartEpochProbe.started_at[-1] == 1  # continued at epoch 1, not restarted at 0
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 1 and final["global_step"] == 2 * steps_per_epoch
