"""Lightning callbacks of our own (everything else comes from ``lightning.pytorch.callbacks``)."""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from visiontrain.errors import TrainingDiverged, UserError

log = logging.getLogger(__name__)

CONFIG_KEY = "visiontrain_config"


class ConfigInCheckpoint(Callback):
    """Store what it takes to use the model again in every checkpoint, as plain dicts (so the file
    still loads with ``weights_only=True``):

    - ``model`` / ``data``: the run's configs, unresolved: ``eval.py`` rebuilds the network with them;
    - ``model_resolved``: the model config with every number filled in, for ``predict.py``;
    - ``preprocessing``: the datamodule's test-time input pipeline (``visiontrain.preprocessing``);
    - ``task``: which task module trained it.
    """

    def __init__(self, sections: dict[str, Any]) -> None:
        self.sections = sections

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        checkpoint[CONFIG_KEY] = {
            **self.sections,
            "preprocessing": getattr(datamodule, "preprocessing", None),
            "task": getattr(pl_module, "task", None),
        }


class RandomStateInCheckpoint(Callback):
    """Save the global random generators (torch, CUDA, numpy, Python) with every checkpoint; restore them on resume.

    Lightning restores weights, optimizer and loops but not the random streams, so a resumed run would
    shuffle, augment and drop out differently from the run it continues. Restored on load and again after
    the sanity check (which draws from them), right before the resumed epoch's data order is drawn.
    Stored as tensors and plain values, so checkpoints still load with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._saved: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        version, python_state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {
                "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                "pos": int(numpy_state[2]),
                "has_gauss": int(numpy_state[3]),
                "cached_gaussian": float(numpy_state[4]),
            },
            "python": {"version": version, "state": list(python_state), "gauss": gauss},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict
        self._restore()

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()  # the sanity check drew from the generators since the checkpoint was loaded

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._saved = None

    def _restore(self) -> None:
        state = self._saved
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        python_state = state["python"]
        random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))


class StopOnNonFiniteLoss(Callback):
    """Stop training with one sentence (step, loss, learning rate, a hint) once the training loss is NaN or infinite.

    Without it a diverged run trains on NaN to the end, exits 0, saves non-finite weights as its "best"
    checkpoint and reports a score. Each step's loss is checked on its device (no synchronisation); the
    outcome is read every ``check_every_n_steps`` steps and at the end of every training epoch, before that
    epoch's checkpoints are written (they are saved at the end of the training epoch), so no checkpoint ever
    holds the weights of a non-finite step. Every DDP process stops together. Lightning's EarlyStopping
    ``check_finite`` only looks at a monitored metric at the end of an epoch.
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self._first_bad: torch.Tensor | None = None  # [step, loss] of the first non-finite loss, step -1: none yet
        self._lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # the rate this step uses (a scheduler changes it before the batch ends), under the step count it ends with
        if trainer.optimizers:
            self._lrs[trainer.global_step + 1] = max(group["lr"] for group in trainer.optimizers[0].param_groups)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        step = trainer.global_step  # the steps done, this one included
        loss = loss.detach().float().reshape(-1)[:1].sum()
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.tensor([-1.0, 0.0], device=loss.device)
        bad = ~torch.isfinite(loss) & (self._first_bad[0] < 0)
        self._first_bad = torch.where(bad, torch.stack([loss.new_tensor(float(step)), loss]), self._first_bad)
        if step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        first_bad = self._first_bad
        diverged = first_bad is not None and bool(first_bad[0] >= 0)
        if not trainer.strategy.reduce_boolean_decision(diverged, all=False):
            self._lrs.clear()
            return
        if diverged:
            step, loss = int(first_bad[0]), float(first_bad[1])
            lr = self._lrs.get(step, next(reversed(self._lrs.values()), float("nan")))
            where = f"at step {step} (epoch {trainer.current_epoch + 1})"
            lr_text = f"learning rate {lr:.3g}"
        else:
            where, loss, lr_text = "in another process", float("nan"), "the learning rate"
        raise TrainingDiverged(
            f"the training loss became {loss} {where} with {lr_text}, so the run was stopped and no checkpoint "
            "of the diverged weights was saved; lower model.optimizer.lr (or add warm-up or gradient clipping "
            "with trainer.gradient_clip_val) and start again."
        )


class MetricsInCheckpoint(Callback):
    """Keep the metrics logged so far (``trainer.callback_metrics``: training, validation, best-so-far) in every
    checkpoint, and give them back on resume (``restored``).

    A run resumed after its last epoch trains nothing, so Lightning has no training or validation metric to
    report; its ``metrics.json`` (and a sweeper's trial value) is rebuilt from these instead of shrinking to the
    test metrics. Plain floats, so checkpoints still load with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self.restored: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        from visiontrain.runtime import scalar_metrics

        trainer = getattr(self, "_trainer", None)
        metrics = scalar_metrics(trainer.callback_metrics) if trainer is not None else {}
        return {"metrics": {k: v for k, v in metrics.items() if not k.startswith("test/")}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = dict(state_dict.get("metrics") or {})

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer


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

        # the step Lightning's loggers count in, restored from the checkpoint: batches that stepped the
        # optimizer; the checkpointed epoch logged at steps below it, the next batch logs at exactly this step
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                writer = logger.experiment._get_file_writer()
                writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
                writer.flush()


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
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning builds the average in setup(), before the strategy moves the module to its device (a GPU):
        # "with the model" (device=null) means where the model is now, or every update would cross devices
        if self._device is None and self._average_model is not None:
            self._average_model.to(pl_module.device)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapped = self.validate and self.has_average()
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after training the module holds the weights its checkpoints hold
        if self.checkpoint == "ema" and self.has_average():
            self._copy_average_to_current(pl_module)

    def ema_state_dict(self, current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``current`` (the module's state dict) with the averaged parameters and buffers in place of the raw ones."""
        if not self.has_average():
            return dict(current)
        module = self._average_model.module
        averaged = dict(itertools.chain(module.named_parameters(), module.named_buffers()))
        return {name: averaged[name].detach() if name in averaged else value for name, value in current.items()}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:  # outside fit: nothing averaged to store
            return
        ema = self.ema_state_dict(checkpoint["state_dict"])
        if self.checkpoint == "ema":
            checkpoint["current_model_state"], checkpoint["state_dict"] = checkpoint["state_dict"], ema
        else:
            checkpoint["ema_state_dict"] = ema
        average_state = self._average_model.state_dict()
        checkpoint["averaging_state"] = {n: v for n, v in average_state.items() if not n.startswith("module.")}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this for trainer.test(ckpt_path=...) too, where its version would put the raw weights
        # back into the module after fit: testing must use the weights of the checkpoint's state_dict
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if self._average_model is None or "ema_state_dict" not in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)  # Lightning's layout, or no EMA yet
            return
        average_state = {"module." + name: value for name, value in checkpoint["ema_state_dict"].items()}
        self._average_model.load_state_dict(average_state | checkpoint["averaging_state"])


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
        grid = self.grid(images, getattr(trainer.datamodule, "preprocessing", None) or {})
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
