"""What every task shares: the network, optimizer and scheduler from the config, compile, class
names in checkpoints, and the dry run that checks a network against its data before training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning import LightningModule
from torch import nn

from visiontrain.errors import UserError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class VisionTask(LightningModule):
    """Base of the task modules. Subclasses call ``save_hyperparameters(ignore=["net", "optimizer",
    "scheduler"])`` so only plain values are saved and checkpoints load with ``weights_only=True``."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        num_classes: int,
        decay_norm_and_bias: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.decay_norm_and_bias = decay_norm_and_bias
        self.compile_net = compile
        self.class_names: list[str] = [str(i) for i in range(num_classes)]

    # --- set-up ---------------------------------------------------------------------------------
    def dry_run(self, input_shape: tuple[int, ...], data_name: str) -> Any:
        """The network's output for one blank image of ``input_shape``; a clear error if it cannot run."""
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                return self.net(torch.zeros(1, *input_shape, device=self.device))
        except RuntimeError as err:
            raise UserError(
                f"{type(self.net).__name__} cannot take {data_name}'s {'x'.join(map(str, input_shape))} "
                f"(channels x H x W) images: {str(err).splitlines()[0]}"
            ) from err
        finally:
            self.net.train(was_training)

    def check_num_classes(self, num_classes: int, data_name: str) -> None:
        if num_classes != self.hparams.num_classes:
            raise UserError(
                f"the model is configured for {self.hparams.num_classes} classes but {data_name} has "
                f"{num_classes}; leave model.num_classes at ${{data.num_classes}}."
            )

    def setup(self, stage: str) -> None:
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        if names and len(names) == len(self.class_names):
            self.class_names = list(names)
        if self.compile_net and not getattr(self.net, "_compiled_call_impl", None):
            self.net.compile()  # in place: parameter names, and so checkpoints, are unchanged

    def on_train_start(self) -> None:
        scheduler = self.lr_schedulers()
        planned, needed = getattr(scheduler, "total_steps", None), int(self.trainer.estimated_stepping_batches)
        if planned is not None and planned != needed:  # a resumed OneCycle keeps the length it was built with
            raise UserError(
                f"the checkpoint's learning-rate schedule of {planned} steps cannot continue into a run that now "
                f"needs {needed}; resume with the original trainer.max_epochs, or start a new run from these weights."
            )

    # --- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        if self.decay_norm_and_bias:
            params = trainable
        else:  # the usual recipe: no weight decay on norm scales and biases
            params = [
                {"params": [p for p in trainable if p.ndim > 1]},
                {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
            ]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoint -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = list(self.class_names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))
