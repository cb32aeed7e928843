"""What every checkpoint carries beyond Lightning's state: the trained artifact's description (with what its data
splits held), the metrics logged so far and the random generators, each given back on resume; and eval.py's check
of the split it tests against the checkpoint's."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer

from visiontrain import artifact
from visiontrain.artifact import ArtifactInfo
from visiontrain.compat import batch_hooks_only_where_used
from visiontrain.data import manifest

if TYPE_CHECKING:
    from visiontrain.tasks.base import VisionTask

log = logging.getLogger(__name__)


@batch_hooks_only_where_used
class ArtifactInCheckpoint(Callback):
    """Store what it takes to use the model again in every checkpoint (``visiontrain.artifact``): the run's
    ``model`` and ``data`` configs, the resolved model config, the data's test-time preprocessing, the task,
    the class names and (detection) category ids; and what the splits held.

    The split manifest (``visiontrain.data.manifest``) is built once the data is set up for training, stored once per
    data version, summarised in the run folder (``splits.json``, beside config.yaml) and in every checkpoint. On the
    first process only: the others write no checkpoint.
    """

    def __init__(self, configs: dict[str, Any]) -> None:
        self.configs = configs
        self.splits: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning sets the datamodule up before its callbacks: its splits are there now
        if stage != "fit" or self.splits is not None or not trainer.is_global_zero or trainer.datamodule is None:
            return
        self.splits = manifest.record(trainer.datamodule, trainer.default_root_dir) or {}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: VisionTask, checkpoint: dict[str, Any]) -> None:
        ids = tuple(pl_module.category_ids) if pl_module.category_ids is not None else None
        preprocessing = trainer.datamodule.spec.preprocessing
        info = ArtifactInfo(
            pl_module.task, tuple(pl_module.class_names), preprocessing, ids, self.configs, self.splits or {}
        )
        artifact.write(checkpoint, info)


@batch_hooks_only_where_used
class SplitAgainstCheckpoint(Callback):
    """eval.py: say in one line whether the test split it evaluates is the one the checkpoint was tested on (its
    validation split, if the training run had no test split), and if not, how many of its images were in each of
    the checkpoint's splits (``manifest.compare``)."""

    def __init__(self, ckpt_path: str | Path, stored: dict[str, Any]) -> None:
        self.ckpt_path = ckpt_path
        self.stored = stored  # the checkpoint's split manifest summary (ArtifactInfo.splits)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "test" or not trainer.is_global_zero or trainer.datamodule is None:
            return
        stored = self.stored
        contents = trainer.datamodule.split_contents()
        if not stored or "test" not in contents:
            log.info("%s records no split manifest: the test split is not compared with the training run's",
                     self.ckpt_path)  # fmt: skip
            return
        evaluated = manifest.build({"test": contents["test"]}, trainer.datamodule.name,
                                   trainer.datamodule.hash_cache_dir())  # fmt: skip
        differs, sentence = manifest.compare("test", manifest.summary(evaluated)["test"], stored)
        (log.warning if differs else log.info)(sentence[0].upper() + sentence[1:])


@batch_hooks_only_where_used
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


@batch_hooks_only_where_used
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
