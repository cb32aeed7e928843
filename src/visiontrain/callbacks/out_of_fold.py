"""Out-of-fold predictions: in a k-fold run (``data.folds``, ``data.fold``) every image of the validation fold is
one the model never trained on. Its predicted probabilities at the best epoch (by the checkpoint's monitor) are
written to ``<run dir>/val_predictions.npz``; the folds of a sweep together cover the whole training pool, which
is what ``visiontrain label-issues <sweep dir>`` (visiontrain.sweeps.label_issues) ranks for label errors."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer

log = logging.getLogger("visiontrain")
FILE_NAME = "val_predictions.npz"


class OutOfFoldPredictions(Callback):
    """``val_predictions.npz``: ``probabilities`` (N, C, float32; the calibrated ones under calibrate=temperature),
    ``labels`` (N, the given class), ``ids`` (N, the manifest's name of each image: its path, or ``train#12`` for
    images read from array files), ``class_names``, ``fold`` and ``folds``, and ``epoch``. Classification in one
    process only; elsewhere it does nothing."""

    def __init__(self, monitor: str, mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.active = False
        self._logits: list[torch.Tensor] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        self.active = bool(getattr(datamodule, "folds", None)) and pl_module.task == "classification"
        if self.active and trainer.world_size > 1:  # a distributed sampler interleaves the fold across processes
            log.warning("out-of-fold predictions are written by single-process runs only: this fold writes none")
            self.active = False
        if not self.active:
            return
        content = datamodule.split_contents()["val"]
        self.ids = list(content.names) if content.images is not None else [os.fspath(f) for f in content.files]
        index = {name: k for k, name in enumerate(pl_module.class_names)}
        self.labels = np.array([index[name] for name in content.labels], dtype=np.int64)
        self.fold, self.folds = int(datamodule.fold), int(datamodule.folds)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if self.active and not trainer.sanity_checking and isinstance(outputs, torch.Tensor):
            self._logits.append(outputs.detach().float().cpu())

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active or trainer.sanity_checking or not self._logits:
            return
        logits = torch.cat(self._logits)
        self._logits.clear()
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best is not None and not (value > self.best if self.mode == "max" else value < self.best):
            return
        self.best = value
        if len(logits) != len(self.ids):  # limited validation batches: not the whole fold
            log.warning("the validation fold was not evaluated whole (%d of %d images): no %s written",
                        len(logits), len(self.ids), FILE_NAME)  # fmt: skip
            self.active = False
            return
        if trainer.is_global_zero:
            probabilities = pl_module.calibrated(logits.to(pl_module.device)).softmax(dim=1).float().cpu().numpy()
            path = Path(trainer.default_root_dir) / FILE_NAME
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
            np.savez_compressed(
                temporary, probabilities=probabilities, labels=self.labels, ids=np.array(self.ids, dtype=str),
                class_names=np.array(pl_module.class_names, dtype=str), fold=self.fold, folds=self.folds,
                epoch=trainer.current_epoch + 1,
            )  # fmt: skip
            os.replace(temporary, path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}  # a resumed fold keeps the best epoch it had

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
