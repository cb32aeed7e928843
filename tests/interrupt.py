"""A real interruption for resume tests, given to a run as a callback from the command line."""

from __future__ import annotations

import os
import signal

from lightning import Callback


class KillAtStep(Callback):
    """SIGKILL the own process once ``step`` optimizer steps are done: no handler runs, nothing is flushed or saved.

    ``job``: only in the multirun job with this number (the whole sweep process dies with it).
    """

    def __init__(self, step: int, job: int | None = None) -> None:
        self.step = step
        self.job = job

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.job is not None:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().job.num != self.job:
                return
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAtTestStart(Callback):
    """SIGKILL the own process when testing begins: after the last epoch's checkpoints, before ``metrics.json``.

    ``job``: only in the multirun job with this number (the whole sweep process dies with it).
    """

    def __init__(self, job: int | None = None) -> None:
        self.job = job

    def on_test_start(self, trainer, pl_module) -> None:
        if self.job is not None:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().job.num != self.job:
                return
        os.kill(os.getpid(), signal.SIGKILL)


class LearningRateAtEpoch(Callback):
    """Set every parameter group's learning rate to ``lr`` when the 1-based ``epoch`` starts (to make a run diverge;
    with ``model.scheduler=null``, or the schedule sets it back).

    ``job``: only in the multirun job with this number.
    """

    def __init__(self, epoch: int, lr: float, job: int | None = None) -> None:
        self.epoch, self.lr, self.job = epoch, lr, job

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.job is not None:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().job.num != self.job:
                return
        if trainer.current_epoch + 1 == self.epoch:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr


class KillAtCheckpointWrite(Callback):
    """SIGKILL the own process inside the write of checkpoint ``file`` in the 1-based ``epoch``: ``moment="created"``
    right after its temporary file is created (0 bytes), ``"written"`` once that file is complete but before it is
    renamed into place (checkpoint_io writes every checkpoint so). ``file="any"``: the first written in that epoch."""

    def __init__(self, file: str, moment: str, epoch: int) -> None:
        self.file, self.moment, self.epoch = file, moment, epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import tempfile
        from pathlib import Path

        if trainer.current_epoch + 1 != self.epoch:
            return
        if self.moment == "created":
            real_mkstemp = tempfile.mkstemp

            def mkstemp(*args, **kwargs):
                fd, path = real_mkstemp(*args, **kwargs)
                if self.file == "any" or Path(path).name.startswith(f".{self.file}."):
                    os.kill(os.getpid(), signal.SIGKILL)
                return fd, path

            tempfile.mkstemp = mkstemp
        else:
            real_replace = os.replace

            def replace(src, dst, *args, **kwargs):
                if Path(dst).name == self.file:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst, *args, **kwargs)

            os.replace = replace


class SignalAtStep(Callback):
    """Send the own process the signal ``name`` (SIGTERM, SIGINT) once ``step`` optimizer steps are done, as a
    scheduler or Ctrl+C would: the process's handlers run. ``job``: only in the multirun job with this number."""

    def __init__(self, step: int, name: str, job: int | None = None) -> None:
        self.step, self.signum, self.job = step, signal.Signals[name], job
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.job is not None:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().job.num != self.job:
                return
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
