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
