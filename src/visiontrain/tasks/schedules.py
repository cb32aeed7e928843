"""Learning-rate schedules. Every scheduler config is a partial taking ``(optimizer, total_steps)``
and is stepped once per optimizer step, so schedules do not depend on the epoch length."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_fraction`` of training, then cosine decay to ``min_lr_ratio * lr``."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step_decay(optimizer: Optimizer, total_steps: int, step_fraction: float = 0.3, gamma: float = 0.1) -> LambdaLR:
    """StepLR over the run's length: multiply the learning rate by ``gamma`` after every ``step_fraction``
    of training. 0.3 of a 10-epoch run is torchvision's detection tutorial recipe (StepLR step 3 epochs)."""
    every = max(1, round(step_fraction * total_steps))
    return LambdaLR(optimizer, lambda step: gamma ** (step // every))


def one_cycle(optimizer: Optimizer, total_steps: int, **kwargs) -> OneCycleLR:
    """OneCycleLR peaking at each parameter group's own learning rate: with discriminative learning rates
    (a backbone at ``backbone_lr_scale`` x the head's) one ``max_lr`` for all groups would erase them."""
    if total_steps >= 3:
        # OneCycleLR divides by each phase's length (pct_start * total_steps - 1 steps, then the rest): a run of
        # a few steps (a debug run) could make one zero; keep both phases at least one step long
        pct_start = kwargs.pop("pct_start", 0.3)
        kwargs["pct_start"] = min(max(pct_start, 2 / total_steps), (total_steps - 1) / total_steps)
    return OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps, **kwargs
    )
