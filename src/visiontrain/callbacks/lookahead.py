"""Lookahead with a rising weight, as airbench94 trains: every ``every`` optimizer steps the slow weights
move towards the fast ones, ``slow = decay * slow + (1 - decay) * fast``, and the fast weights are reset
to the slow ones; ``decay = base ** every * (step / total_steps) ** power`` rises from 0 (plain training)
to ``base ** every`` at the end. At the last step the network keeps the slow weights, so the checkpoints
written after it, and the test, use them. Unlike ``visiontrain.callbacks.ema.EMA`` (a passive average
used for evaluation) this changes the training trajectory. Floating-point buffers (BatchNorm statistics)
are averaged with the parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from visiontrain.compat import batch_hooks_only_where_used
from visiontrain.errors import UserError


@batch_hooks_only_where_used
class Lookahead(Callback):
    def __init__(self, every: int = 5, base: float = 0.95, power: float = 3.0) -> None:
        if every < 1 or not 0.0 < base < 1.0:
            raise UserError(f"callbacks.lookahead: every={every} must be >= 1 and base={base} between 0 and 1.")
        self.every = every
        self.base = base
        self.power = power
        self._slow: dict[str, torch.Tensor] | None = None

    def _tensors(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pl_module.net.state_dict().items() if v.is_floating_point()}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._slow is None:  # not restored from a checkpoint
            self._slow = {k: v.detach().clone() for k, v in self._tensors(pl_module).items()}
        else:
            self._slow = {k: v.to(pl_module.device) for k, v in self._slow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, max(1, int(trainer.estimated_stepping_batches))
        last = step >= total
        if step % self.every and not last:
            return
        decay = self.base**self.every * min(1.0, step / total) ** self.power
        for name, fast in self._tensors(pl_module).items():
            slow = self._slow[name]
            if not last or step % self.every == 0:
                slow.lerp_(fast, 1 - decay)
            fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self._slow} if self._slow is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._slow = state_dict.get("slow")
