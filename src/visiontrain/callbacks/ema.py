"""An exponential moving average of the weights, kept in every checkpoint (``callbacks=ema``)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from visiontrain import compat
from visiontrain.errors import UserError


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights (and BatchNorm statistics), updated after optimizer steps.

    Lightning's ``EMAWeightAveraging`` does the averaging, the warm-up (``update_starting_at_step``) and
    the resume of the average (it is stored in the checkpoint). Subclassed to make its fixed choices
    configurable and to keep our checkpoints whole:

    - ``validate``: validation (its metrics, the best-checkpoint choice, early stopping) runs on the EMA
      weights; Lightning always does;
    - ``checkpoint``: which weights a checkpoint's ``state_dict`` holds, the one that testing after training,
      ``eval.py``, ``predict.py`` and export read: ``ema`` (the other set goes to ``current_model_state``,
      Lightning's layout) or ``raw`` (the EMA then goes to ``ema_state_dict``); either way resume restores both;
    - before the first update (warm-up: ``update_starting_at_step``) the EMA is the raw weights, not the
      initial ones Lightning would validate and save;
    - testing a checkpoint (also in the process that trained) uses its ``state_dict``, whichever it holds;
    - entries of the state dict that are not averaged (persistent metric states such as ``val_acc_best``)
      are the module's current ones, not those of the copy taken when training began.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        validate: bool = True,
        checkpoint: str = "ema",
        device: str | None = None,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise UserError(f"callbacks.ema.decay={decay}: give a value between 0 and 1 (e.g. 0.999).")
        if checkpoint not in ("ema", "raw"):
            raise UserError(f"callbacks.ema.checkpoint={checkpoint!r}: choose 'ema' or 'raw'.")
        if checkpoint == "ema" and not validate:
            raise UserError(
                "callbacks.ema.validate=false with callbacks.ema.checkpoint=ema would choose the best checkpoint "
                "by the raw weights' score but save the EMA weights; set checkpoint=raw or validate=true."
            )
        super().__init__(
            device=device,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        self.validate = validate
        self.checkpoint = checkpoint
        self._swapped = False

    def has_average(self) -> bool:
        average = compat.average_model(self)
        return average is not None and int(average.n_averaged) > 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning builds the average in setup(), before the strategy moves the module to its device (a GPU):
        # "with the model" (device=null) means where the model is now, or every update would cross devices
        if compat.averaging_device(self) is None and compat.average_model(self) is not None:
            compat.average_model(self).to(pl_module.device)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapped = self.validate and self.has_average()
        if self._swapped:
            compat.swap_models(self, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._swapped:
            compat.swap_models(self, pl_module)
            self._swapped = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after training the module holds the weights its checkpoints hold
        if self.checkpoint == "ema" and self.has_average():
            compat.copy_average_to_current(self, pl_module)

    def ema_state_dict(self, current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``current`` (the module's state dict) with the averaged parameters and buffers in place of the raw ones."""
        if not self.has_average():
            return dict(current)
        module = compat.average_model(self).module
        averaged = dict(itertools.chain(module.named_parameters(), module.named_buffers()))
        return {name: averaged[name].detach() if name in averaged else value for name, value in current.items()}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if compat.average_model(self) is None:  # outside fit: nothing averaged to store
            return
        ema = self.ema_state_dict(checkpoint["state_dict"])
        if self.checkpoint == "ema":
            checkpoint["current_model_state"], checkpoint["state_dict"] = checkpoint["state_dict"], ema
        else:
            checkpoint["ema_state_dict"] = ema
        average_state = compat.average_model(self).state_dict()
        checkpoint["averaging_state"] = {n: v for n, v in average_state.items() if not n.startswith("module.")}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this for trainer.test(ckpt_path=...) too, where its version would put the raw weights
        # back into the module after fit: testing must use the weights of the checkpoint's state_dict
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if compat.average_model(self) is None or "ema_state_dict" not in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)  # Lightning's layout, or no EMA yet
            return
        average_state = {"module." + name: value for name, value in checkpoint["ema_state_dict"].items()}
        compat.average_model(self).load_state_dict(average_state | checkpoint["averaging_state"])
