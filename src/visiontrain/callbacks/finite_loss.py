"""A diverging run stops within a few steps, with one sentence, before any checkpoint of its weights is written."""

from __future__ import annotations

from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from visiontrain.compat import batch_hooks_only_where_used
from visiontrain.errors import TrainingDiverged


@batch_hooks_only_where_used
class StopOnNonFiniteLoss(Callback):
    """Stop training with one sentence (step, loss, learning rate, a hint) once the training loss is NaN or infinite.

    Without it a diverged run trains on NaN to the end, exits 0, saves non-finite weights as its "best"
    checkpoint and reports a score. Each step's loss is kept as it is (no tensor operation per step); every
    ``check_every_n_steps`` steps, and at the end of every training epoch, the losses kept are checked together on
    their device and the outcome is read, before that epoch's checkpoints are written (they are saved at the end of
    the training epoch), so no checkpoint ever holds the weights of a non-finite step. Every DDP process stops
    together. Lightning's EarlyStopping ``check_finite`` only looks at a monitored metric at the end of an epoch.
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self._first_bad: torch.Tensor | None = None  # [step, loss] of the first non-finite loss, step -1: none yet
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) of the steps since the last check
        self._lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # the rate this step uses (a scheduler changes it before the batch ends), under the step count it ends with
        if trainer.optimizers:
            self._lrs[trainer.global_step + 1] = max(group["lr"] for group in trainer.optimizers[0].param_groups)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # no tensor operation per step (each costs ~10-20 us of Python and dispatch on a CPU): the step's loss is
        # kept, and the losses since the last check are looked at together, on their device, at the check
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        step = trainer.global_step  # the steps done, this one included
        self._pending.append((step, loss.detach()))
        if step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def _look_at_pending(self) -> None:
        """Fold the losses kept since the last check into ``_first_bad`` (on their device, no synchronisation)."""
        if not self._pending:
            return
        losses = torch.cat([loss.reshape(-1)[:1].float() for _, loss in self._pending])
        steps = torch.tensor([float(step) for step, _ in self._pending], device=losses.device)
        self._pending.clear()
        if self._first_bad is None or self._first_bad.device != losses.device:
            self._first_bad = torch.tensor([-1.0, 0.0], device=losses.device)
        bad = ~torch.isfinite(losses)
        first = bad.int().argmax()  # the first non-finite loss of these, if any
        found = torch.stack([steps[first], losses[first]])
        self._first_bad = torch.where(bad.any() & (self._first_bad[0] < 0), found, self._first_bad)

    def _check(self, trainer: Trainer) -> None:
        self._look_at_pending()
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
