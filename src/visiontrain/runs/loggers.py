"""Loggers of our own (everything else comes from ``lightning.pytorch.loggers``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger without the ``epoch`` scalar Lightning adds to every logging call.

    TensorBoard plots against the step; the epoch staircase only pushed itself to the top of the scalars
    page, above the train/val/test curves (the epoch is in every checkpoint and in the per-epoch log lines).
    """

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics({name: value for name, value in metrics.items() if name != "epoch"}, step)
