"""Checkpoint files: complete or absent, never half-written; named by 1-based epoch; ``last`` never a second copy.
(What a checkpoint holds, and reading one: visiontrain.artifact.)"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from visiontrain.errors import UserError

# read once: os.umask can only be read by setting it
_UMASK = os.umask(0)
os.umask(_UMASK)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a local checkpoint to a temporary file in its own folder, flush it to disk, then rename it into place.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temp
    folder: when that is another filesystem (a node-local /tmp, the run on NFS or Lustre) the final "rename"
    is a copy, which a kill or a full disk can leave half done, and /tmp must hold the whole checkpoint.
    A rename within one folder (``os.replace``) is atomic on POSIX, so ``last.ckpt`` is always the previous
    complete checkpoint or the new complete one. Remote paths (s3://, gs://, ...) keep Lightning's path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it owner-only
            os.replace(temporary, target)
        except BaseException as err:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"no space left on the device to write {target} ({err.strerror}); the checkpoints already "
                    f"written are intact: free some space and continue with resume={target.parent.parent}."
                ) from None
            raise


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with ``{epoch}`` counted from 1 in file names, as the console counts:
    the third epoch's checkpoint is ``epoch_003.ckpt``.

    Saved at the end of the training epoch (after the task has logged its epoch's training metrics), not at
    the end of validation: the checkpoint then holds every metric of its epoch (``MetricsInCheckpoint``), so
    the record of a run resumed after its last epoch can be rebuilt from it.
    """

    def __init__(self, *args: Any, save_on_train_epoch_end: bool | None = True, **kwargs: Any) -> None:
        super().__init__(*args, save_on_train_epoch_end=save_on_train_epoch_end, **kwargs)

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["epoch"] = candidates["epoch"] + 1
        return candidates


class LastCheckpoint(EpochCheckpoint):
    """``last.ckpt``, the newest state (what ``resume=`` continues from), written after every validation.

    When another checkpoint callback has just saved the same state (the epoch improved the monitored
    metric), ``last.ckpt`` becomes a hard link to that file rather than a second copy of it. Every write
    replaces the file by rename (``AtomicCheckpointIO``), so a later ``last.ckpt`` never alters the best
    file it was linked to, and deleting an old best leaves ``last.ckpt`` intact.
    """

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        twin = next(
            (
                callback._last_checkpoint_saved
                for callback in trainer.checkpoint_callbacks
                if callback is not self
                and isinstance(callback, ModelCheckpoint)
                and callback._last_global_step_saved == trainer.global_step
                and callback._last_checkpoint_saved
                and get_protocol(str(callback._last_checkpoint_saved)) == "file"
                and os.path.isfile(callback._last_checkpoint_saved)
            ),
            None,
        )
        if get_protocol(str(filepath)) != "file" or not self._link(trainer, twin, filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    @staticmethod
    def _link(trainer: Trainer, source: str | None, target: str) -> bool:
        """Hard-link ``target`` to ``source`` (atomically, by rename) on rank zero; every rank gets the outcome,
        False where there is no twin or the filesystem cannot link (then the file is written as usual)."""
        linked = False
        if trainer.is_global_zero and source is not None:
            temporary = Path(target).with_name(f".{Path(target).name}.{os.getpid()}.link.tmp")
            try:
                temporary.unlink(missing_ok=True)
                os.link(source, temporary)
                os.replace(temporary, target)
                linked = True
            except OSError:
                temporary.unlink(missing_ok=True)
        return bool(trainer.strategy.broadcast(linked))
