"""A run folder belongs to one run at a time: ``<run dir>/.lock`` names the process (pid, host) that holds it.

Two runs given the same ``hydra.run.dir`` (or a ``resume=`` of a folder whose run is still going) would write
checkpoints, TensorBoard events and ``metrics.json`` over each other. The lock is created exclusively
(``O_CREAT | O_EXCL``); a second run is refused in one sentence. A lock left by a process that has ended
(killed: no handler ran) is taken over: on the same host the pid is checked, together with the process's start
time so that a recycled pid does not count. A lock from another host cannot be checked and is respected, but for
one left by an earlier attempt of the same SLURM job: SLURM kills a job before it requeues it, and the requeued job
(SLURM_RESTART_COUNT one higher) may run on another node.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from visiontrain import compat
from visiontrain.errors import UserError

log = logging.getLogger("visiontrain")

LOCK_NAME = ".lock"
_held: set[Path] = set()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a recycled pid from its first owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(owner: dict) -> bool:
    pid = int(owner.get("pid", 0) or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    started = owner.get("started")
    return started is None or _start_time(pid) in (None, started)


def _slurm_attempt() -> dict:
    """The SLURM job this process runs in and which start of it this is (nothing outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    return {"slurm_job": job, "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)} if job else {}


def _earlier_attempt(owner: dict, me: dict) -> bool:
    """``owner`` is an earlier start of the SLURM job ``me`` runs in: over, since SLURM runs one at a time."""
    same_job = bool(me.get("slurm_job")) and owner.get("slurm_job") == me["slurm_job"]
    return same_job and int(owner.get("slurm_restart", 0)) < me["slurm_restart"]


def _owner_text(owner: dict) -> str:
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"


def first_process() -> bool:
    """Rank zero of the whole job (every node): the process that takes and cleans the folder; the others share it.

    Lightning reads the global rank from the environment as the process starts: RANK (torchrun), SLURM_PROCID
    (srun), else LOCAL_RANK (0 in the process that starts Lightning's own DDP processes, one per node with
    NODE_RANK set for nodes after the first; torchrun names a node GROUP_RANK)."""
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return compat.global_rank_at_start() == 0 and node == "0"


def remove_leftovers(run_dir: str | Path) -> None:
    """Delete the temporary files of checkpoint writes a kill cut short (``.<name>.*.tmp``, see checkpoint_io):
    only while holding the folder, when no other process can be writing one."""
    for leftover in (Path(run_dir) / "checkpoints").glob(".*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
            log.info("removed %s, left by an interrupted checkpoint write", leftover.name)


def acquire(run_dir: str | Path) -> None:
    """Take ``run_dir`` for this process (again if it already holds it), or raise a UserError naming the holder."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()), **_slurm_attempt()}
    for attempt in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except FileNotFoundError:
                continue  # just given back: try again
            except (OSError, ValueError):
                owner = {}
            if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                break
            if not owner and attempt < 2:  # being written this moment: look again
                time.sleep(0.1)
                continue
            if owner and (owner.get("host") != me["host"] or _alive(owner)) and not _earlier_attempt(owner, me):
                raise UserError(
                    f"{run_dir} is in use by another run ({_owner_text(owner)}); wait for it to end or choose "
                    f"another folder (if that run is gone, delete {lock})."
                ) from None
            # its process has ended (or died between creating the lock and writing it, or its SLURM job was requeued)
            log.warning("%s: taking over the folder from %s, which has ended", run_dir, _owner_text(owner))
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"{run_dir} is being taken by another run at the same moment; start again.")
    _held.add(run_dir)


def release(run_dir: str | Path) -> None:
    """Give ``run_dir`` back (only a lock this process holds is removed)."""
    run_dir = Path(run_dir).resolve()
    if run_dir not in _held:
        return
    _held.discard(run_dir)
    lock = run_dir / LOCK_NAME
    with contextlib.suppress(OSError, ValueError):
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()


@atexit.register
def release_all() -> None:
    """What the end of the process does: give back every folder it still holds."""
    for run_dir in list(_held):
        release(run_dir)
