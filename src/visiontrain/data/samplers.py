"""How the training split is drawn each epoch (``data.sampler``): shuffled (null), class-balanced for classification
(``balanced``) or LVIS-style repeat factor sampling for detection (``repeat_factor``).

Both samplers draw a whole epoch from a generator seeded with the run's seed and the epoch number, so every DDP
process draws the same epoch and ``ShardedSampler`` hands each its own share of it; the epoch has a fixed length,
so every process takes the same number of steps. ``ShardedSampler`` is a ``DistributedSampler``: Lightning leaves
it in place (it would otherwise swap a DataLoader's sampler, or a batch sampler's, for a plain shuffle under DDP),
and with one process it is the sampler itself.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import Sampler, WeightedRandomSampler

from visiontrain import kinds
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

# data.sampler -> what it does (the kinds whose data offers each: visiontrain.kinds)
SAMPLERS = {
    "balanced": "draws images by their one class",
    "repeat_factor": "repeats images by the rarest class of the objects in them",
}
# detection's choice of data.repeat_threshold when the config gives none (see conf/data/coco_detection.yaml): LVIS's
# 0.001 suits 1,000+ classes over 100k images; with a handful of classes over a few hundred images no class is that
# rare, so a class is rare here when it is in fewer than 10 % of the training images
DEFAULT_REPEAT_THRESHOLD = 0.1


def checked_sampler(sampler: str | None, task: str) -> str | None:
    """``data.sampler`` as the config gives it, checked against the data's task: one sentence otherwise."""
    if sampler is None:
        return None
    offered = {name: kind.name for kind in kinds.KINDS.values() for name in kind.samplers}
    if sampler not in SAMPLERS:
        choices = ", ".join(f"{name} ({offered.get(name)})" for name in SAMPLERS)
        raise UserError(f"data.sampler={sampler!r} is not a sampler: choose {choices}, or null (shuffle).")
    fitting = kinds.of(task).samplers
    if sampler not in fitting:
        instead = f"data.sampler={fitting[0]} or null" if fitting else "data.sampler=null"
        raise UserError(f"data.sampler={sampler} {SAMPLERS[sampler]}, and this is {task} data; set {instead}.")
    return sampler


def run_seed() -> int:
    """The run's seed as Lightning's ``seed_everything`` left it (what its own distributed samplers use)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochSeeded:
    """A sampler whose draw is a function of (seed, epoch): ``set_epoch`` (called by Lightning before each epoch)
    reseeds it, so every process draws the same epoch and a resumed run the epoch it would have drawn."""

    seed: int
    generator: torch.Generator

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)


class BalancedSampler(EpochSeeded, WeightedRandomSampler):
    """Each training image drawn with probability inversely proportional to its class's count, with replacement,
    ``len(labels)`` draws per epoch: every class is drawn about equally often."""

    def __init__(self, labels: Sequence[int], class_names: Sequence[str], seed: int) -> None:
        counts = Counter(int(label) for label in labels)
        weights = torch.tensor([1.0 / counts[int(label)] for label in labels], dtype=torch.double)
        super().__init__(weights, num_samples=len(labels), replacement=True, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)
        self.class_weights = {k: 1.0 / n for k, n in sorted(counts.items())}
        name = {k: class_names[k] if 0 <= k < len(class_names) else str(k) for k in counts}
        total = len(labels)
        log.info(
            "data.sampler=balanced: training images per class %s",
            ", ".join(f"{name[k]} {n} ({n / total:.1%})" for k, n in sorted(counts.items())),
        )
        # relative to the most common class: how many times more often an image of each class is drawn
        most = max(counts.values())
        log.info(
            "data.sampler=balanced: draw weight per image of each class %s (x the most common class's)",
            ", ".join(f"{name[k]} {most / n:.3g}" for k, n in sorted(counts.items())),
        )


def repeat_factors(image_classes: Sequence[set[int]], threshold: float) -> tuple[dict[int, float], list[float]]:
    """LVIS repeat factors (Gupta et al. 2019): ``f(c)``, the fraction of images holding class ``c``; the class's
    factor ``r(c) = max(1, sqrt(threshold / f(c)))``; an image's factor is the largest of its classes' (1 with no
    objects). Returns the class frequencies and the image factors."""
    total = len(image_classes)
    images_with = Counter(c for classes in image_classes for c in set(classes))
    frequency = {c: n / total for c, n in sorted(images_with.items())}
    class_factor = {c: max(1.0, math.sqrt(threshold / f)) for c, f in frequency.items()}
    return frequency, [max((class_factor[c] for c in classes), default=1.0) for classes in image_classes]


class RepeatFactorSampler(EpochSeeded, Sampler[int]):
    """LVIS-style repeat factor sampling: image ``i`` with factor ``r_i`` appears ``floor(r_i)`` times per epoch, once
    more with probability ``r_i - floor(r_i)`` (stochastic rounding, drawn anew each epoch), in a shuffled order.

    The epoch has ``round(sum r_i)`` draws: the rounded draw is cut or topped up (from its own shuffled order) to that
    length, so its length is fixed (a DDP requirement: every process takes the same number of steps).
    """

    def __init__(
        self, image_classes: Sequence[set[int]], threshold: float, class_names: Sequence[str], seed: int
    ) -> None:
        if not 0 < threshold <= 1:
            raise UserError(
                f"data.repeat_threshold={threshold} must be in (0, 1]: the fraction of training images below which "
                "a class counts as rare."
            )
        frequency, factors = repeat_factors(image_classes, threshold)
        self.factors = torch.tensor(factors, dtype=torch.double)
        self.length = max(1, round(float(self.factors.sum())))
        self.seed = seed
        self.generator = torch.Generator()
        self.set_epoch(0)
        name = {c: class_names[c - 1] if 0 < c <= len(class_names) else str(c) for c in frequency}
        log.info(
            "data.sampler=repeat_factor: fraction of the %d training images holding each class %s",
            len(factors),
            ", ".join(f"{name[c]} {f:.3g}" for c, f in frequency.items()),
        )
        log.info(
            "data.sampler=repeat_factor (data.repeat_threshold=%g): repeat factor per class %s; an epoch draws %d "
            "images instead of %d",
            threshold,
            ", ".join(f"{name[c]} {max(1.0, math.sqrt(threshold / f)):.2f}" for c, f in frequency.items()),
            self.length,
            len(factors),
        )

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        whole = self.factors.floor()
        extra = torch.rand(len(self.factors), generator=self.generator, dtype=torch.double) < self.factors - whole
        counts = (whole + extra).long()
        drawn = torch.repeat_interleave(torch.arange(len(counts)), counts)
        drawn = drawn[torch.randperm(len(drawn), generator=self.generator)]
        if len(drawn) < self.length:  # a fixed length: top up from the draw's own shuffled order
            drawn = drawn.repeat(math.ceil(self.length / len(drawn)))
        yield from drawn[: self.length].tolist()


def grouped_batches(indices: Iterator[int], group_ids: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Batches of ``batch_size`` indices of one group each, in the order ``indices`` fills them; the unfilled batches
    come last (aspect-ratio batching: a group is an orientation)."""
    buckets: dict[int, list[int]] = {}
    for index in indices:
        bucket = buckets.setdefault(group_ids[index], [])
        bucket.append(index)
        if len(bucket) == batch_size:
            yield list(bucket)
            bucket.clear()
    yield from (bucket for bucket in buckets.values() if bucket)


class ShardedSampler(DistributedSamplerWrapper):
    """This process's share (every ``num_replicas``-th draw) of an epoch drawn by an ``EpochSeeded`` sampler.

    With ``group_ids`` the share is ordered so that consecutive runs of ``batch_size`` indices hold one group
    (aspect-ratio batching by ordering: a DataLoader's plain batching then cuts batches of one orientation; only the
    last batch or two of an epoch may mix). A batch sampler would do the same, but Lightning replaces the sampler
    inside a batch sampler with its own shuffle under DDP, which would undo the repeat factors.
    """

    def __init__(
        self,
        sampler: EpochSeeded,
        num_replicas: int = 1,
        rank: int = 0,
        group_ids: Sequence[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        # no shuffle of its own: the sampler's draw is already in random order, the same on every process
        super().__init__(sampler, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.drawn = sampler
        self.group_ids = list(group_ids) if group_ids is not None else None
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        # the draw is reseeded here: Lightning's wrapper passes the epoch on to the wrapped sampler only since 2.6.x,
        # and without it every epoch (and every process) would draw from wherever the generator was left
        super().set_epoch(epoch)
        self.drawn.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        share = super().__iter__()
        if self.group_ids is None:
            return share
        return (index for batch in grouped_batches(share, self.group_ids, self.batch_size) for index in batch)
