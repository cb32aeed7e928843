"""A real interruption for resume tests, given to a run as a callback from the command line."""

from __future__ import annotations

import os
import signal

from lightning import Callback


class KillAtStep(Callback):
    """SIGKILL the own process once ``step`` optimizer steps are done: no handler runs, nothing is flushed or saved."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
