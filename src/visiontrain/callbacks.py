"""Lightning callbacks of our own (everything else comes from ``lightning.pytorch.callbacks``)."""

from __future__ import annotations

from typing import Any

from lightning import Callback, LightningModule, Trainer

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
