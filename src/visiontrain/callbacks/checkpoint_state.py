"""What every checkpoint carries beyond Lightning's state: the trained artifact's description, the metrics
logged so far and the random generators, each given back on resume."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer

from visiontrain import artifact
from visiontrain.artifact import ArtifactInfo

if TYPE_CHECKING:
    from visiontrain.tasks.base import VisionTask


class ArtifactInCheckpoint(Callback):
    """Store what it takes to use the model again in every checkpoint (``visiontrain.artifact``): the run's
    ``model`` and ``data`` configs, the resolved model config, the data's test-time preprocessing, the task,
    the class names and (detection) category ids."""

    def __init__(self, configs: dict[str, Any]) -> None:
        self.configs = configs

    def on_save_checkpoint(self, trainer: Trainer, pl_module: VisionTask, checkpoint: dict[str, Any]) -> None:
        ids = tuple(pl_module.category_ids) if pl_module.category_ids is not None else None
        preprocessing = trainer.datamodule.spec.preprocessing
        info = ArtifactInfo(pl_module.task, tuple(pl_module.class_names), preprocessing, ids, self.configs)
        artifact.write(checkpoint, info)


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
        from visiontrain.runs.records import scalar_metrics

        trainer = getattr(self, "_trainer", None)
        metrics = scalar_metrics(trainer.callback_metrics) if trainer is not None else {}
        return {"metrics": {k: v for k, v in metrics.items() if not k.startswith("test/")}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = dict(state_dict.get("metrics") or {})

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
