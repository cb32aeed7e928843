"""Multi-process DDP inside a Hydra multirun: each job's processes run that job, in that job's folder.

Lightning starts the extra DDP processes of a job by running the command line again. In a multirun that
command line is the whole sweep, so every extra process would start a sweep of its own (a second sweep
folder, and with a sampling sweeper such as Optuna, other hyperparameters than its rank 0). Here the job's
rank 0 names its folder in the environment the processes inherit, and an extra process started for a
multirun runs exactly that job's overrides as a single run in that folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from lightning import Trainer
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import OmegaConf

from visiontrain.errors import UserError
from visiontrain.resume import LAST_CHECKPOINT, is_multirun

JOB_DIR_ENV = "VISIONTRAIN_DDP_JOB_DIR"
# launchers that run each job inside the process that was started with the sweep's command line
IN_PROCESS_LAUNCHERS = {"hydra._internal.core_plugins.basic_launcher.BasicLauncher"}

# what Lightning's launcher sets in the launching process, as it was before any job of this process ran
_LAUNCHER_ENV_AT_START = {
    key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
}


def reset_between_jobs() -> None:
    """Forget the previous multirun job's DDP processes: its process group (whose other members have exited) and
    its variables (with LOCAL_RANK still set, Lightning would take the next job's processes for started by a
    cluster and not start them)."""
    if not is_multirun():
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in _LAUNCHER_ENV_AT_START.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def job_command_line(args: list[str]) -> list[str]:
    """The command-line arguments of an extra DDP process: its multirun job's, not the sweep's."""
    job_dir = os.environ.get(JOB_DIR_ENV)
    if not job_dir or os.environ.get("LOCAL_RANK", "0") == "0" or not {"-m", "--multirun"} & set(args):
        return args
    overrides = [str(o) for o in OmegaConf.load(Path(job_dir) / ".hydra" / "overrides.yaml")]
    # a resumed sweep's job (resume=<sweep dir>) continues from where its rank 0 continues
    if any(o.startswith("resume=") for o in overrides):
        overrides = [o for o in overrides if not o.startswith("resume=")]
        last = Path(job_dir) / LAST_CHECKPOINT
        overrides += [f'ckpt_path="{last}"'] if last.is_file() else []
    # Lightning names each process's log (hydra.job.name=train_ddp_process_<rank>); nothing else is written
    names = [a for a in args if a.startswith("hydra.job.name=")]
    return [*overrides, f'hydra.run.dir="{job_dir}"', "hydra.output_subdir=null", *names]


def prepare_multirun_job(trainer: Trainer, output_dir: str) -> None:
    """Let the DDP processes Lightning is about to start for this multirun job find it (or refuse, in one sentence)."""
    if not is_multirun() or not isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher):
        return
    launcher = HydraConfig.get().launcher.get("_target_", "")
    if launcher not in IN_PROCESS_LAUNCHERS:
        raise UserError(
            f"a multirun job cannot start its own {trainer.num_devices} DDP processes under {launcher.split('.')[-1]}; "
            "use the basic launcher (no hydra/launcher=), trainer.strategy=ddp_spawn, or on SLURM "
            "hydra.launcher.tasks_per_node=<devices per node> so that srun starts the processes."
        )
    os.environ[JOB_DIR_ENV] = str(output_dir)
