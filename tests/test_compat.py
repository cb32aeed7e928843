"""The private internals visiontrain relies on are still where it reaches for them (visiontrain.compat): when a
Lightning, torch or Hydra release moves one, this fails with a sentence naming the version and what moved."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, LightningModule, Trainer

from visiontrain import compat
from visiontrain.tasks.base import VisionTask


@pytest.mark.parametrize("name", list(compat.PROBES))
def test_internal_is_where_visiontrain_reaches(name):
    compat.PROBES[name]()


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(14, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_public_logging_cadence_is_lightnings(accumulate):
    """VisionTask.logs_this_step (public trainer state) agrees with Lightning's own decision on every step,
    gradient accumulation and the last step included; empty hooks set to None are skipped, not called."""
    seen = []

    @compat.batch_hooks_only_where_used
    class Compare(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            connector = getattr(trainer, "_logger_connector", None)
            if connector is not None:  # Lightning's private decision, where it still is
                seen.append((VisionTask.logs_this_step(pl_module), connector.should_update_logs))

    assert Compare.on_train_batch_end is None and Compare.on_train_batch_start is not None
    trainer = Trainer(
        max_epochs=2, log_every_n_steps=2, accumulate_grad_batches=accumulate, callbacks=[Compare()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Tiny())
    assert len(seen) == 14
    assert [ours for ours, _ in seen] == [theirs for _, theirs in seen]
    assert any(ours for ours, _ in seen) and not all(ours for ours, _ in seen)
