"""A run stopped by a signal says so and can be resumed: SIGTERM (a scheduler ending a job, ``kill``) and SIGINT
(Ctrl+C) leave a resumable ``checkpoints/last.ckpt``, one line, and the shell's exit status 128 + signal number,
never 0.

Lightning already turns both signals into exceptions at a batch boundary: SIGTERM into ``SIGTERMException`` (a
``SystemExit`` that would end the process with status 0), SIGINT into ``KeyboardInterrupt`` (then ``sys.exit(1)``);
every callback's ``on_exception`` sees that exception before the Trainer tears down, which is where the checkpoint
is written here. ``visiontrain.cli.train`` turns what this callback recorded into the line and the status.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from visiontrain.runs.resume import LAST_CHECKPOINT


@dataclass(frozen=True)
class Stop:
    """What stopped a run: the signal, the 1-based epoch it was in and the optimizer steps done."""

    signum: int
    epoch: int
    step: int

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def sentence(self, run_dir: str | Path, multirun: bool = False) -> str:
        name = signal.Signals(self.signum).name
        where = f"stopped by {name} at epoch {self.epoch} step {self.step}"
        if multirun:  # a sweep job: the sweep continues it with resume=<sweep dir>
            return f"{where}; a checkpoint of this trial is in {Path(run_dir) / LAST_CHECKPOINT}"
        return f"{where}; resume with: python train.py resume={run_dir}"


def signal_of(exception: BaseException) -> int | None:
    if isinstance(exception, SIGTERMException):
        return signal.SIGTERM
    if isinstance(exception, KeyboardInterrupt):
        return signal.SIGINT
    return None


class CheckpointOnSignal(Callback):
    """Saves ``<run dir>/checkpoints/last.ckpt`` when SIGTERM or SIGINT stops a fit (mid-epoch: Lightning's loop
    state is in the file, so ``resume=`` continues from that step) and records the ``Stop`` in ``stopped``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.stopped: Stop | None = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        signum = signal_of(exception)
        if signum is None:
            return
        self.stopped = Stop(int(signum), trainer.current_epoch + 1, trainer.global_step)
        if trainer.state.fn == "fit" and trainer.global_step > 0:
            trainer.save_checkpoint(self.run_dir / LAST_CHECKPOINT)
