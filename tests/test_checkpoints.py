"""Checkpoint files: named by 1-based epoch, and last.ckpt a hard link to the best file, never a second copy."""

from __future__ import annotations

import os

import torch
from lightning import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from visiontrain.runs.checkpoint_io import AtomicCheckpointIO, EpochCheckpoint, LastCheckpoint


class ScriptedScore(LightningModule):
    """A linear layer whose validation logs a scripted ``val/score`` per epoch."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scores = scores

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


def test_best_is_named_by_epoch_from_one_and_last_links_to_it_only_when_they_are_the_same_state(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    best = EpochCheckpoint(
        dirpath=checkpoints,
        filename="epoch_{epoch:03d}",
        monitor="val/score",
        mode="max",
        auto_insert_metric_name=False,
    )
    last = LastCheckpoint(dirpath=checkpoints, filename="last", monitor=None, enable_version_counter=False)
    inodes: list[tuple[list[str], bool]] = []

    class Observe(Callback):  # after both checkpoints of each epoch: when the next starts, and at the end
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch > 0:
                self.look()

        def on_fit_end(self, trainer, pl_module):
            self.look()

        def look(self):
            names = sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith("."))
            linked = os.path.samefile(checkpoints / "last.ckpt", best.best_model_path)
            inodes.append((names, linked))

    trainer = Trainer(
        max_epochs=3,
        callbacks=[best, last, Observe()],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(ScriptedScore([0.5, 0.9, 0.7]), train_dataloaders=loader(), val_dataloaders=loader())

    assert inodes == [
        (["epoch_001.ckpt", "last.ckpt"], True),  # the first epoch is the best so far: one file, two names
        (["epoch_002.ckpt", "last.ckpt"], True),  # improved: the old best goes, last follows the new one
        (["epoch_002.ckpt", "last.ckpt"], False),  # worse: last is the newest state, the best file untouched
    ]
    best_state = torch.load(checkpoints / "epoch_002.ckpt", weights_only=True)
    last_state = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert (best_state["epoch"], last_state["epoch"]) == (1, 2)  # Lightning's own counter stays 0-based
    assert os.stat(checkpoints / "epoch_002.ckpt").st_nlink == 1
