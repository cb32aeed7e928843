"""Lightning callbacks of our own (everything else comes from ``lightning.pytorch.callbacks``)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
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
