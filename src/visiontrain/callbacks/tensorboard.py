"""What goes to TensorBoard besides the metrics: a resumed run's curves continued, the augmented training batch."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from visiontrain import compat
from visiontrain.compat import batch_hooks_only_where_used

log = logging.getLogger(__name__)


@batch_hooks_only_where_used
class ContinuedTensorBoardRun(Callback):
    """Make a resumed run's TensorBoard curves continue the interrupted ones in the same event folder.

    Writes a session-start marker at the resumed step: TensorBoard then hides whatever the interrupted
    process logged after its last checkpoint (those steps are trained again), so there is one curve per
    tag, not a second one overlapping it. This is what ``SummaryWriter(purge_step=...)`` does, applied
    once the checkpoint has been restored and its step is known.
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        # the step Lightning's loggers count in, restored from the checkpoint: optimizer steps (batches that
        # stepped it); the checkpointed epoch logged at steps below it, the next batch logs at exactly this step
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                writer = compat.event_file_writer(logger.experiment)
                writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
                writer.flush()


@batch_hooks_only_where_used
class AugmentedBatchToTensorBoard(Callback):
    """Write the first training batch as the network receives it (after the datamodule's augmentation
    and the task's MixUp/CutMix), denormalised, as an image grid to TensorBoard (``train/augmented_batch``).

    Captured by a forward pre-hook on the task's network during that batch, so it sees exactly the
    network's input whatever the datamodule or task; falls back to the batch's images.
    """

    def __init__(self, max_images: int = 32, images_per_row: int = 8) -> None:
        self.max_images = max_images
        self.images_per_row = images_per_row
        self._captured: Any = None
        self._hook = None
        self._done = False
        self._step = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._done or not trainer.is_global_zero:
            return
        network = getattr(pl_module, "net", pl_module)
        self._step = trainer.global_step  # the step this batch trains (global_step counts it once it is done)
        self._hook = network.register_forward_pre_hook(self._capture)

    def _capture(self, module: torch.nn.Module, args: tuple) -> None:
        if self._captured is None and args:
            self._captured = args[0]

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._hook is None:
            return
        self._hook.remove()
        self._hook, self._done = None, True
        images = self._captured if self._captured is not None else batch[0]
        self._captured = None
        grid = self.grid(images, trainer.datamodule.spec.preprocessing)
        writers = [lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_image")]
        if not writers:
            log.warning("debug=augment: no TensorBoard logger, so the augmented batch is not written")
        for writer in writers:
            writer.add_image("train/augmented_batch", grid, global_step=self._step)
            writer.flush()

    def grid(self, images: torch.Tensor | list[torch.Tensor], spec: dict[str, Any]) -> torch.Tensor:
        """Images normalised with the datamodule's mean/std (if any) -> one [0, 1] grid image."""
        from torchvision.utils import make_grid

        images = [image.detach().float().cpu() for image in images[: self.max_images]]
        if "mean" in spec:
            mean = torch.tensor(spec["mean"]).view(-1, 1, 1)
            std = torch.tensor(spec["std"]).view(-1, 1, 1)
            images = [image * std + mean for image in images]
        height = max(image.shape[-2] for image in images)
        width = max(image.shape[-1] for image in images)  # detection batches: images of different sizes
        padded = [torch.nn.functional.pad(i, (0, width - i.shape[-1], 0, height - i.shape[-2])) for i in images]
        return make_grid(torch.stack(padded).clamp(0, 1), nrow=self.images_per_row, padding=2)
