"""The training metrics, updated on every step at a fraction of torchmetrics' general-purpose cost, with the same
states, synchronisation and values (``tests/test_overhead.py`` compares them with the torchmetrics classes).

What a training step costs beside the network is paid on every step. Measured in one process (2-core AMD EPYC
Zen 3, one thread, CPU time, median of 3 rounds of 1000 updates; torch 2.14, torchmetrics 1.x), per step:

- ``MeanMetric(nan_strategy="disable").update(loss)`` 65 us -> ``RunningMean.update`` 39 us;
- ``MetricCollection({"acc": MulticlassAccuracy(top_k=1, average="micro")}).update(logits, labels)`` (128 x 10)
  129 us -> ``RunningAccuracy.update`` through the collection's ``["acc"]`` 42 us (its argmax included);
- segmentation: ``logits.argmax(dim=1)`` on an NCHW map is a slow reduction in torch's CPU kernels (14.0 ms for
  8x2x96x96, 74 ms for 8x2x192x192) where ``logits.max(dim=1).indices``, the same indices, takes 0.8 ms (3.7 ms):
  :func:`class_map`, in every training and evaluation step; and ``MulticlassJaccardIndex.update`` (its boolean-mask
  gather of the non-ignored pixels) 1.67 ms -> :class:`TrainJaccardIndex` 0.42 ms (8x96x96).

For scale: a simple_cnn step (batch 128) takes ~45 ms of CPU here on one thread; a pennfudan_unet step ~750 ms.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """The class of each pixel, ``logits.argmax(dim=1)``: equal to it (first maximum on ties; NaN counts as the
    maximum), computed as ``max(dim=1).indices``, which torch's CPU kernels reduce 20x faster over the channel
    dimension of an ``(N, C, H, W)`` map."""
    return logits.max(dim=1).indices


def deterministic_bincount(values: torch.Tensor, minlength: int) -> torch.Tensor:
    """``torch.bincount``, which CUDA computes with atomic adds (not reproducible, refused under
    ``torch.use_deterministic_algorithms``): there, counted by comparison instead, as torchmetrics does."""
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        return (values[:, None] == torch.arange(minlength, device=values.device)).sum(dim=0)
    return torch.bincount(values, minlength=minlength)


class RunningMean(Metric):
    """The mean of one scalar per update (the training loss of each step): ``MeanMetric(nan_strategy="disable")``'s
    states (``mean_value``, ``weight``: sums, summed over processes), arithmetic and value, without its input
    casting and broadcasting on every step. A NaN shows as NaN."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("mean_value", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:
        self.mean_value += value.detach().to(self.mean_value.dtype)
        self.weight += 1.0

    def compute(self) -> torch.Tensor:
        return self.mean_value / self.weight


class RunningAccuracy(Metric):
    """Top-1 accuracy over all samples from logits ``(N, C)`` and class indices ``(N,)``: the value of
    ``MulticlassAccuracy(top_k=1, average="micro")`` (correct / all, from integer counts summed over processes),
    counted with one comparison per step. Soft targets are not labels: pass the hard labels."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.total += labels.numel()

    def compute(self) -> torch.Tensor:
        # as MulticlassAccuracy: 0 before any sample
        return self.correct.float() / self.total.clamp(min=1)


class TrainJaccardIndex(MulticlassJaccardIndex):
    """``MulticlassJaccardIndex`` (its confusion-matrix state, reduction and synchronisation) whose update takes
    class maps and counts the pixels of ``ignore_index`` into a spare bin instead of gathering the others."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        classes = self.num_classes
        target = target.reshape(-1).long()
        cells = target * classes + preds.reshape(-1).long()
        if self.ignore_index is not None:
            cells = torch.where(target == self.ignore_index, classes * classes, cells)
        counts = deterministic_bincount(cells, classes * classes + 1)[: classes * classes]
        self.confmat += counts.reshape(classes, classes)
