"""``<run dir>/plots/learning_curves.png``: training and validation loss and the monitored metric per epoch."""

from __future__ import annotations

import time
from typing import Any

from lightning import Callback, LightningModule, Trainer

from visiontrain.compat import batch_hooks_only_where_used
from visiontrain.plots.figures import learning_curves_figure, publish_figure


@batch_hooks_only_where_used
class LearningCurves(Callback):
    """Keeps each epoch's losses and monitored metric (with its training twin) and redraws the figure after an
    epoch once ``redraw_seconds`` have passed since the last drawing (or the start of training), so an interrupted
    run has its curves too, and at the end of training. A drawing takes ~0.3 s of matplotlib here: after every
    epoch it cost short epochs several percent of their time (2 % of the default MNIST run's, 3 % of a 13-step
    PennFudan epoch's). The history travels in checkpoints: a resumed run's figure continues the interrupted one's.

    Metrics are read once Lightning has gathered what the task logged at the end of an epoch (it calls the
    callbacks' epoch-end hooks before the task's): validation ones when validation ends, training ones when the
    next epoch (or training) starts. The checkpoint of an epoch is written before its training metrics are
    read, so a resumed run's curve lacks the training point of the epoch it resumed from.
    """

    def __init__(self, monitor: str, redraw_seconds: float = 30.0) -> None:
        self.monitor = monitor
        self.redraw_seconds = float(redraw_seconds)
        self.history: list[dict[str, float]] = []
        self._epoch_to_finish: int | None = None
        self._drawn_at = time.monotonic()

    def names(self) -> tuple[str, ...]:
        metric = self.monitor.split("/", 1)[-1]
        return "train/loss", "val/loss", f"train/{metric}", f"val/{metric}"

    def row(self, epoch: int) -> dict[str, float]:
        """The history's row of ``epoch`` (counted from 1, as on the console), created when first needed."""
        if not self.history or self.history[-1]["epoch"] != epoch:
            self.history.append({"epoch": epoch})
        return self.history[-1]

    def read(self, trainer: Trainer, epoch: int, stage: str) -> None:
        row = self.row(epoch)
        for name in self.names():
            value = trainer.callback_metrics.get(name)
            if name.startswith(f"{stage}/") and value is not None and value.numel() == 1:
                row[name] = float(value)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.read(trainer, trainer.current_epoch + 1, "val")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_to_finish = trainer.current_epoch + 1

    def finish_epoch(self, trainer: Trainer) -> None:
        if self._epoch_to_finish is None:
            return
        self.read(trainer, self._epoch_to_finish, "train")
        self._epoch_to_finish = None

    def draw(self, trainer: Trainer, tag: str | None = None) -> None:
        self._drawn_at = time.monotonic()
        if self.history and trainer.is_global_zero:
            figure = learning_curves_figure(self.history, self.monitor)
            publish_figure(trainer, "learning_curves", figure, tag=tag)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._drawn_at = time.monotonic()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish_epoch(trainer)
        if time.monotonic() - self._drawn_at >= self.redraw_seconds:
            self.draw(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish_epoch(trainer)
        self.draw(trainer, tag="train/learning_curves")  # the file, and once into TensorBoard too

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]
