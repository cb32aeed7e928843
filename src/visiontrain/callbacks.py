"""Lightning callbacks of our own (everything else comes from ``lightning.pytorch.callbacks``)."""

from __future__ import annotations

from typing import Any

from lightning import Callback, LightningModule, Trainer

CONFIG_KEY = "visiontrain_config"


class ConfigInCheckpoint(Callback):
    """Store the run's model and data configs (plain, unresolved dicts) in every checkpoint.

    ``eval.py ckpt_path=...`` then rebuilds the same network without being told the model config,
    and the checkpoint still loads with ``weights_only=True`` (only str/int/float/list/dict inside).
    """

    def __init__(self, sections: dict[str, Any]) -> None:
        self.sections = sections

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.sections
