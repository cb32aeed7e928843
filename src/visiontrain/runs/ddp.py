"""Multi-process DDP inside a Hydra multirun: each job's processes run that job, in that job's folder.

Lightning starts the extra DDP processes of a job by running the command line again. In a multirun that
command line is the whole sweep, so every extra process would start a sweep of its own (a second sweep
folder, and with a sampling sweeper such as Optuna, other hyperparameters than its rank 0). Here the job's
rank 0 names its folder in the environment the processes inherit, and an extra process started for a
multirun runs exactly that job's overrides as a single run in that folder instead.

Under torchrun (one node or several) torchrun starts every process with the same command line, and each would make
a run folder of its own (named after the second it started). Global rank 0 makes the folder as usual and hands it,
with its command line, to the others through the store torchrun's agent on node 0 serves to all of them (the one
torch's process group meets at); they wait for it before Hydra starts and run that command line in that folder.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from visiontrain import compat
from visiontrain.errors import UserError
from visiontrain.runs import command_line
from visiontrain.runs.resume import is_multirun, resumable_checkpoint

if TYPE_CHECKING:
    from lightning import Trainer
    from torch.distributed import Store

JOB_DIR_ENV = "VISIONTRAIN_DDP_JOB_DIR"
# the key under which torchrun's rank 0 names its run folder and command line for the other processes
TORCHRUN_RUN_KEY = "run"
# how long the other processes wait for it: torch's own default for meeting in a process group
TORCHRUN_WAIT = datetime.timedelta(minutes=30)
# launchers that run each job inside the process that was started with the sweep's command line
IN_PROCESS_LAUNCHERS = {compat.BASIC_LAUNCHER}

# what Lightning's launcher sets in the launching process, as it was before any job of this process ran
_LAUNCHER_ENV_AT_START = {
    key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def store_on_loopback(create: Callable[..., Store]) -> Callable[..., Store]:
    """Wrap torch's ``env://`` store creation: rank zero's rendezvous store listens on the loopback address when
    the processes meet there (one node, MASTER_ADDR not set by the user: Lightning then uses 127.0.0.1).

    torch's TCPStore server otherwise listens on every interface of the machine whatever address the processes
    use, so anyone on the network could reach it during training. It is handed a socket bound to 127.0.0.1 (its
    ``master_listen_fd``); an address the user or the cluster set (MASTER_ADDR of another host, SLURM's node
    name: several nodes) is left to torch as it is.
    """

    from torch.distributed import TCPStore

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


def serve_store_on_loopback() -> None:
    """Rank zero's rendezvous store on the loopback address from here on (see ``store_on_loopback``)."""
    compat.serve_rendezvous_store_on_loopback(store_on_loopback)


def reset_between_jobs() -> None:
    """Forget the previous multirun job's DDP processes: its process group (whose other members have exited) and
    its variables (with LOCAL_RANK still set, Lightning would take the next job's processes for started by a
    cluster and not start them)."""
    import torch

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
    """The command-line arguments of an extra DDP process: its multirun job's, or under torchrun rank 0's, not the
    ones it was started with."""
    typed = command_line.read(args)
    if not typed.runs_the_task:
        return args
    if _torchelastic_launched() and _world_size() > 1:
        return _torchrun_command_line(args, typed.multirun)
    multirun = typed.multirun
    if _srun_tasks() > 1 and not multirun:
        return _srun_command_line(args)
    job_dir = os.environ.get(JOB_DIR_ENV)
    if not job_dir or os.environ.get("LOCAL_RANK", "0") == "0" or not multirun:
        return args
    overrides = [str(o) for o in OmegaConf.load(Path(job_dir) / ".hydra" / "overrides.yaml")]
    # Lightning names each process's log (hydra.job.name=train_ddp_process_<rank>); nothing else is written
    names = [a for a in args if a.startswith("hydra.job.name=")]
    return _in_run_dir(overrides, job_dir, names)


def _in_run_dir(overrides: list[str], run_dir: str, names: list[str]) -> list[str]:
    """``overrides`` run as a single run in ``run_dir``, where this process writes nothing but its log (``names``:
    ``hydra.job.name=train_ddp_process_<rank>``). A resumed run (``resume=<dir>``) continues from the checkpoint its
    rank 0 continues from, without taking back the run's command line a second time."""
    if any(o.startswith("resume=") for o in overrides):
        overrides = [o for o in overrides if not o.startswith(("resume=", "ckpt_path="))]
        last = resumable_checkpoint(Path(run_dir), f"resume={run_dir}", required=False)
        overrides += [f'ckpt_path="{last}"'] if last else []
    return [*overrides, f'hydra.run.dir="{run_dir}"', "hydra.output_subdir=null", *names]


# what rank 0 set for itself (or that every process sets for itself) in a command line handed on
OWN_SETTINGS = ("hydra.run.dir=", "hydra.job.name=", "hydra.output_subdir=")


def _torchelastic_launched() -> bool:
    """Started by torchrun (``torch.distributed.is_torchelastic_launched``'s test, without importing torch: the
    command line is read before torch loads)."""
    return os.environ.get("TORCHELASTIC_RUN_ID") is not None


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _require_agent_store() -> None:
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        raise UserError(
            "this torchrun does not share its rendezvous store with the training processes (TORCHELASTIC_USE_AGENT_"
            "STORE is not True), so they cannot agree on one run folder; use torchrun's static or c10d rendezvous."
        )


def _torchrun_store() -> Store:
    """A client of the store torchrun's agent on node 0 serves at MASTER_ADDR:MASTER_PORT to every process of the
    run (its rendezvous store, where torch's process group meets too); our keys sit under a prefix of their own,
    one per start of the processes (torchrun --max-restarts starts them again)."""
    from torch.distributed import PrefixStore, TCPStore

    _require_agent_store()
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout=TORCHRUN_WAIT)
    return PrefixStore(f"visiontrain/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _torchrun_command_line(args: list[str], multirun: bool) -> list[str]:
    """Global rank 0 runs its own command line (and shares it, see ``share_run_dir``); every other process waits
    for rank 0's run folder and command line, and runs that command line in that folder. Nothing but rank 0 reads
    or takes back a command line, so ``resume=<run dir>`` typed on every node continues one run."""
    if multirun:
        raise UserError(
            "torchrun starts the processes of one run: leave -m out (a sweep of multi-node runs: hydra/launcher=slurm)."
        )
    _require_agent_store()  # before rank 0 makes a folder
    rank = int(os.environ["RANK"])
    if rank == 0:
        return args
    try:
        shared = json.loads(_torchrun_store().get(TORCHRUN_RUN_KEY))
    except RuntimeError as err:  # rank 0 ended first (its node's agent, which serves the store, went with it)
        raise UserError(f"global rank 0 ended before naming its run folder ({err}); its output says why.") from None
    overrides = [a for a in shared["args"] if not a.startswith(OWN_SETTINGS)]
    return _in_run_dir(overrides, shared["run_dir"], [f"hydra.job.name=train_ddp_process_{rank}"])


def share_run_dir(run_dir: str | Path) -> None:
    """Under torchrun, global rank 0 hands the folder it runs in and its command line (``resume=`` already turned
    into that run's command line) to the other processes, waiting in ``job_command_line``; for any other start this
    does nothing."""
    if not _torchelastic_launched() or _world_size() < 2 or os.environ.get("RANK") != "0":
        return
    shared = {"run_dir": str(Path(run_dir).resolve()), "args": sys.argv[1:]}
    _torchrun_store().set(TORCHRUN_RUN_KEY, json.dumps(shared))


def _srun_tasks() -> int:
    """The processes SLURM's srun starts for this command (Lightning's SLURM environment counts them the same way);
    0 when not started by srun."""
    if "SLURM_NTASKS" not in os.environ or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return 0
    return int(os.environ["SLURM_NTASKS"] or 0)


def _srun_command_line(args: list[str]) -> list[str]:
    """``srun python train.py ...`` (the processes of one run, each started by srun with the same command line): they
    have no rendezvous before Lightning's to agree on a new folder in, so the folder is named on the command line
    (hydra/launcher=slurm names it for its jobs); the processes but global rank 0 write only their own log there."""
    named = any(a.startswith(("resume=", "hydra.run.dir=")) and a.split("=", 1)[1] not in ("", "null") for a in args)
    if not named:
        raise UserError(
            f"srun starts {_srun_tasks()} processes of this run, which cannot agree on a new run folder: name it with "
            "hydra.run.dir=outputs/train/runs/$SLURM_JOB_ID (or submit with python train.py -m hydra/launcher=slurm)."
        )
    rank = os.environ.get("SLURM_PROCID", "0")
    if rank == "0":
        return args
    own = [a for a in args if not a.startswith(("hydra.job.name=", "hydra.output_subdir="))]
    return [*own, "hydra.output_subdir=null", f"hydra.job.name=train_ddp_process_{rank}"]


def prepare_multirun_job(trainer: Trainer, output_dir: str) -> None:
    """Let the DDP processes Lightning is about to start for this multirun job find it (or refuse, in one sentence)."""
    if not is_multirun() or not isinstance(
        getattr(trainer.strategy, "launcher", None), compat.subprocess_script_launcher()
    ):
        return
    launcher = HydraConfig.get().launcher.get("_target_", "")
    if launcher not in IN_PROCESS_LAUNCHERS:
        raise UserError(
            f"a multirun job cannot start its own {trainer.num_devices} DDP processes under {launcher.split('.')[-1]}; "
            "use the basic launcher (no hydra/launcher=), trainer.strategy=ddp_spawn, or on SLURM "
            "hydra.launcher.tasks_per_node=<devices per node> so that srun starts the processes."
        )
    os.environ[JOB_DIR_ENV] = str(output_dir)
