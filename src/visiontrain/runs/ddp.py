"""Multi-process DDP inside a Hydra multirun: each job's processes run that job, in that job's folder.

Lightning starts the extra DDP processes of a job by running the command line again. In a multirun that
command line is the whole sweep, so every extra process would start a sweep of its own (a second sweep
folder, and with a sampling sweeper such as Optuna, other hyperparameters than its rank 0). Here the job's
rank 0 names its folder in the environment the processes inherit, and an extra process started for a
multirun runs exactly that job's overrides as a single run in that folder instead.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from lightning import Trainer
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import OmegaConf
from torch.distributed import Store, TCPStore

from visiontrain.errors import UserError
from visiontrain.runs.resume import is_multirun, resumable_checkpoint

JOB_DIR_ENV = "VISIONTRAIN_DDP_JOB_DIR"
# launchers that run each job inside the process that was started with the sweep's command line
IN_PROCESS_LAUNCHERS = {"hydra._internal.core_plugins.basic_launcher.BasicLauncher"}

# what Lightning's launcher sets in the launching process, as it was before any job of this process ran
_LAUNCHER_ENV_AT_START = {
    key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _store_on_loopback(create: Callable[..., Store]) -> Callable[..., Store]:
    """Wrap torch's ``env://`` store creation: rank zero's rendezvous store listens on the loopback address when
    the processes meet there (one node, MASTER_ADDR not set by the user: Lightning then uses 127.0.0.1).

    torch's TCPStore server otherwise listens on every interface of the machine whatever address the processes
    use, so anyone on the network could reach it during training. It is handed a socket bound to 127.0.0.1 (its
    ``master_listen_fd``); an address the user or the cluster set (MASTER_ADDR of another host, SLURM's node
    name: several nodes) is left to torch as it is.
    """

    @functools.wraps(create)
    def wrapper(hostname: str, port: int, rank: int, world_size: int, timeout: Any, *args: Any, **kwargs: Any) -> Store:
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
        if rank != 0 or agent_store or sys.platform != "linux" or not _is_loopback(hostname):
            return create(hostname, port, rank, world_size, timeout, *args, **kwargs)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((socket.gethostbyname(hostname), int(port)))
            listener.listen(socket.SOMAXCONN)
        except OSError:
            listener.close()
            return create(hostname, port, rank, world_size, timeout, *args, **kwargs)
        use_libuv = args[0] if args else kwargs.get("use_libuv", True)
        return TCPStore(
            host_name=hostname,
            port=int(port),
            world_size=world_size,
            is_master=True,
            timeout=timeout,
            multi_tenant=True,
            master_listen_fd=listener.detach(),  # the store owns the socket from here
            use_libuv=use_libuv,
        )

    wrapper.visiontrain_loopback = True  # type: ignore[attr-defined]
    return wrapper


# the module (torch.distributed.rendezvous is also the name of a function)
_rendezvous = importlib.import_module("torch.distributed.rendezvous")
if not getattr(_rendezvous._create_c10d_store, "visiontrain_loopback", False):
    _rendezvous._create_c10d_store = _store_on_loopback(_rendezvous._create_c10d_store)


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
        last = resumable_checkpoint(Path(job_dir), f"resume={job_dir}", required=False)
        overrides += [f'ckpt_path="{last}"'] if last else []
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
