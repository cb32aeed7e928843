"""Image classification: one LightningModule whose network, optimizer and scheduler come from the config, and its
serving (``predictions.csv`` with the top-k classes of each image)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat
from torchvision.transforms import v2

from visiontrain.data.spec import DataSpec
from visiontrain.errors import UserError
from visiontrain.plots.figures import (
    confusion_matrix_figure,
    per_class_figure,
    prediction_grid_figure,
    publish_figure,
    reliability_figure,
)
from visiontrain.tasks.base import (
    OptimizerFactory,
    SchedulerFactory,
    VisionTask,
    class_weight_tensor,
    plain_class_weights,
)
from visiontrain.tasks.calibration import fit_temperature
from visiontrain.tasks.running import RunningAccuracy, RunningMean
from visiontrain.tasks.tta import augmented

log = logging.getLogger("visiontrain")
CALIBRATION_BINS = 15


def accuracy_metrics(num_classes: int, training: bool = False) -> MetricCollection:
    """Top-1 (and top-5 when there are enough classes) accuracy over all samples.

    While training: top-1 only, counted by :class:`visiontrain.tasks.running.RunningAccuracy` (the same value at a
    third of the per-update cost: these updates run on every step and cost throughput).
    """
    if training:
        return MetricCollection({"acc": RunningAccuracy()})
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


def batch_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> v2.Transform | None:
    """MixUp and/or CutMix (one of them drawn per batch when both are on, as torchvision's references do)."""
    for key, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise UserError(f"model.{key}={alpha}: give 0 (off) or a positive Beta-distribution parameter.")
    mixes = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []
    mixes += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


class ClassificationModule(VisionTask):
    """Cross-entropy training of ``net`` (``class_weights``: null, a weight per class, or ``balanced``: the
    training split's inverse class frequencies); accuracy (top-1/top-5), per-class accuracy and confusion matrix
    at test. ``tta``: the test-time augmentation of validation and test (visiontrain.tasks.tta: none | flip |
    flip_translate), not
    of ``forward()``, which exports call.

    Only plain values are saved as hyperparameters (the network and the optimizer partials are
    excluded), so checkpoints load with ``torch.load(weights_only=True)``.
    """

    task = "classification"

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        decay_norm_and_bias: bool = False,
        compile: bool = False,
        channels_last: bool | str = False,
        test_images_logged: int = 32,
        hardest_images_logged: int = 16,
        tta: str = "none",
        bias_lr_scale: float = 1.0,
        class_weights: Sequence[float] | str | None = None,
        calibration: str = "none",
        **architecture: Any,
    ) -> None:
        super().__init__(
            net, optimizer, scheduler, num_classes, decay_norm_and_bias, compile, channels_last, **architecture
        )
        self.set_tta(tta, "model.tta")
        class_weights = plain_class_weights(class_weights, num_classes)  # before save_hyperparameters reads it
        if bias_lr_scale <= 0:
            raise UserError(
                f"model.bias_lr_scale={bias_lr_scale}: give a positive factor (1 = the same learning rate)."
            )
        if calibration not in ("none", "temperature"):
            raise UserError(f"model.calibration={calibration}: give none or temperature (calibrate=temperature).")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        # calibrate=temperature: the logits' temperature, fitted after every validation (visiontrain.tasks.calibration)
        # and saved with the weights; only then a buffer, so checkpoints without calibration keep their state dict
        self.calibrating = calibration == "temperature"
        if self.calibrating:
            self.register_buffer("temperature", torch.ones(()))
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # takes class indices and, under MixUp/CutMix, soft targets (then smoothed on top of the mixing); its class
        # weights are a buffer of the loss, so they move with the module's device and are saved in checkpoints
        self.criterion = nn.CrossEntropyLoss(
            weight=class_weight_tensor(class_weights, num_classes), label_smoothing=label_smoothing
        )
        self.batch_mixing = batch_mixing(num_classes, mixup_alpha, cutmix_alpha)

        # a NaN training loss shows as NaN (MeanMetric(nan_strategy="disable")'s value), not checked for on every step
        self.train_loss = RunningMean()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.train_metrics = accuracy_metrics(num_classes, training=True).clone(prefix="train/")
        self.val_metrics = accuracy_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = accuracy_metrics(num_classes).clone(prefix="test/")
        # in the checkpoint, so a resumed run keeps the best value of the epochs before the interruption
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        # expected calibration error (15 equal-width bins of the top class's probability) and its diagram
        self.test_calibration = MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS)
        # calibrate=temperature: the error the same logits had before scaling, beside it
        self.test_calibration_before = (
            MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS) if self.calibrating else None
        )
        self._test_samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._hardest = HardestImages(hardest_images_logged)

    # --- set-up ---------------------------------------------------------------------------------
    def check_data(self, spec: DataSpec) -> None:
        super().check_data(spec)
        self.check_num_classes(spec)
        out = self.dry_run(spec.input_shape, spec.name)
        if out.ndim != 2 or out.shape[1] != spec.num_classes:
            raise UserError(
                f"{type(self.net).__name__} outputs {tuple(out.shape[1:])} scores per image but {spec.name} has "
                f"{spec.num_classes} classes; set the network's num_classes to ${{data.num_classes}}."
            )

    def on_fit_start(self) -> None:
        """Networks whose initialisation depends on the data (e.g. airbench's whitening layer) offer
        ``init_from_batch(images)`` and ``data_initialised``: they get normalised, unaugmented training
        images from whatever datamodule the trainer has, once (not when resuming or loaded from weights)."""
        datamodule = self.trainer.datamodule
        if self.calibrating and datamodule is not None and not self.validates(datamodule):
            raise UserError(
                "calibrate=temperature fits the temperature on the validation split, and this run has none "
                "(data.val_size=0 or trainer.limit_val_batches=0): give the data a validation split."
            )
        init = getattr(self.net, "init_from_batch", None)
        if init is None or datamodule is None or getattr(self.net, "data_initialised", False):
            return
        images = self.training_images(datamodule, int(getattr(self.net, "init_images", 5000)))
        init(images)
        if self.trainer.world_size > 1:  # every process drew its own images: take rank 0's result
            for tensor in self.net.state_dict().values():
                tensor.copy_(self.trainer.strategy.broadcast(tensor, src=0))

    def validates(self, datamodule) -> bool:
        """Whether this fit runs a validation loop (a datamodule without a validation split gives an empty list)."""
        loader = datamodule.val_dataloader()
        return self.trainer.limit_val_batches != 0 and not (isinstance(loader, (list, tuple)) and not loader)

    @torch.no_grad()
    def training_images(self, datamodule, count: int) -> torch.Tensor:
        """Up to ``count`` training images as the network receives them at evaluation (on this device,
        normalised, no augmentation: the trainer is not in its training stage yet)."""
        parts, total = [], 0
        for batch in datamodule.train_dataloader():
            batch = datamodule.transfer_batch_to_device(batch, self.device, 0)
            images = datamodule.on_after_batch_transfer(batch, 0)[0]
            parts.append(images[: count - total])
            total += len(parts[-1])
            if total >= count:
                break
        return torch.cat(parts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_memory_format(images))

    def evaluation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for validation and test under the test-time augmentation ``tta`` (model.tta; eval.py's tta=)."""
        return augmented(self.task, self.tta, self, images)

    def class_weights(self) -> torch.Tensor | None:
        return self.criterion.weight

    def parameter_groups(self):
        """With ``bias_lr_scale`` != 1, the 1-D parameters (norm shifts and scales, biases) learn at that multiple
        of the learning rate (airbench's BatchNorm biases: x64); their weight decay, if any
        (``decay_norm_and_bias``), is divided by it, so they decay by as much per step as the other weights."""
        scale = self.hparams.get("bias_lr_scale", 1.0)
        if scale == 1.0 or self.backbone_lr_scale is not None:
            return super().parameter_groups()
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        biases = {"params": [p for p in trainable if p.ndim <= 1], "lr_scale": scale, "name": "biases"}
        biases["weight_decay"] = weight_decay / scale if self.decay_norm_and_bias else 0.0
        return [{"params": [p for p in trainable if p.ndim > 1], "name": "weights"}, biases]

    # --- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        # the loss learns from the mixed images' soft targets; train accuracy counts the hard labels
        images, targets = self.batch_mixing(images, labels) if self.batch_mixing is not None else (images, labels)
        logits = self(images)
        loss = self.criterion(logits, targets)
        # the metrics themselves, not the collection: its update walks every metric's signature on each call
        self.train_loss.update(loss.detach())
        self.train_metrics["acc"].update(logits.detach(), labels)
        # only on the steps the loggers write (trainer.log_every_n_steps): self.log costs ~0.5 ms per call
        if self.logs_this_step():
            self.log("train/loss_step", loss.detach(), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss, sync_dist=True)
        self.log_dict(self.train_metrics)

    def _score(
        self, logits: torch.Tensor, labels: torch.Tensor, loss_metric: MeanMetric, metrics: MetricCollection
    ) -> None:
        loss_metric.update(self.criterion(logits, labels), weight=len(labels))
        metrics.update(logits, labels)

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits whose softmax the model gives as probabilities (divided by the temperature when calibrated)."""
        return logits / self.temperature if self.calibrating else logits

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits = self.evaluation_logits(batch[0])
        self._score(logits, batch[1], self.val_loss, self.val_metrics)
        if self.calibrating and not self.trainer.sanity_checking:
            self._val_outputs.append((logits.detach().float(), batch[1]))
        return logits  # for callbacks (out-of-fold predictions)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss, prog_bar=True)
        acc = self.val_metrics["acc"].compute()
        self.log_dict(self.val_metrics, prog_bar=True)
        if self.trainer.sanity_checking:  # a few batches before training: not an epoch's result
            return
        self.val_acc_best.update(acc)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)
        if self.calibrating and self._val_outputs:
            self.fit_temperature()

    def fit_temperature(self) -> None:
        """The temperature of this epoch's weights, from its validation logits (every process's, so that each
        fits the same value); the checkpoint saved after this validation keeps it."""
        logits, labels = (torch.cat(parts) for parts in zip(*self._val_outputs))
        self._val_outputs.clear()
        if self.trainer.world_size > 1:  # the distributed sampler gives every process as many images
            logits, labels = self.all_gather(logits).flatten(0, 1), self.all_gather(labels).flatten(0, 1)
        self.temperature.fill_(fit_temperature(logits, labels))
        self.log("val/temperature", self.temperature, sync_dist=False)

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        raw = self.evaluation_logits(images)
        logits = self.calibrated(raw)  # what the model gives as probabilities; the same top class
        self._score(logits, labels, self.test_loss, self.test_metrics)
        preds = logits.argmax(dim=1)
        self.test_class_acc.update(preds, labels)
        self.test_confusion.update(preds, labels)
        self.test_calibration.update(logits.float(), labels)
        if self.calibrating:
            self.test_calibration_before.update(raw.float(), labels)
        # each image's own cross-entropy (no smoothing, no class weights): how wrong the model is about it
        self._hardest.offer(images, preds, labels, F.cross_entropy(logits.float(), labels, reduction="none"))
        kept = sum(len(s[0]) for s in self._test_samples)
        if kept < self.hparams.test_images_logged:
            n = self.hparams.test_images_logged - kept
            self._test_samples.append((batch[0][:n].float().cpu(), preds[:n].cpu(), labels[:n].cpu()))

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log_dict(self.test_metrics)
        per_class = self.test_class_acc.compute()
        # already synchronised by torchmetrics; sync_dist only keeps Lightning from warning under DDP
        self.log_dict({f"test/acc_class/{name}": acc for name, acc in zip(self.class_names, per_class)}, sync_dist=True)
        confusion = self.test_confusion.compute()
        split = "test split"
        publish_figure(
            self.trainer,
            "confusion_matrix",
            confusion_matrix_figure(confusion, self.class_names, f"confusion matrix, {split} (rows: true class)"),
            tag="test/confusion_matrix",
        )
        title = f"per-class accuracy, {split} (overall {float(self.test_metrics['acc'].compute()):.3f})"
        publish_figure(
            self.trainer, "per_class_accuracy", per_class_figure(per_class, self.class_names, "accuracy", title)
        )
        ece = self.test_calibration.compute()
        self.log("test/ece", ece, sync_dist=True)
        scaled = ""
        if self.calibrating:
            before = self.test_calibration_before.compute()
            self.log("test/ece_uncalibrated", before, sync_dist=True)
            scaled = f"; temperature {float(self.temperature):.3f}, {float(before):.3f} before"
            self.test_calibration_before.reset()
        # the metric's own states: each image's top-class probability and whether that class was right
        confidences, correct = (dim_zero_cat(state) for state in (self.test_calibration.confidences,
                                                                   self.test_calibration.accuracies))  # fmt: skip
        title = f"reliability, {split} (expected calibration error {float(ece):.3f}{scaled})"
        publish_figure(
            self.trainer,
            "reliability_diagram",
            reliability_figure(confidences.cpu(), correct.cpu(), CALIBRATION_BINS, title),
            tag="test/reliability_diagram",
        )
        if self._test_samples:
            images, preds, labels = (torch.cat(t) for t in zip(*self._test_samples))
            grid = prediction_grid_figure(images, preds, labels, self.class_names)
            publish_figure(self.trainer, "test_predictions", grid, tag="test/predictions")
        self._test_samples.clear()
        if self._hardest.losses is not None:
            images, preds, labels, losses = self._hardest.taken()
            title = f"the {len(images)} test images of highest loss (predicted / true, loss), {split}"
            grid = prediction_grid_figure(images, preds, labels, self.class_names, [f"loss {v:.2f}" for v in losses],
                                          title)  # fmt: skip
            publish_figure(self.trainer, "hardest_examples", grid, tag="test/hardest_examples")
        if self.trainer.is_global_zero:
            pairs = confused_pairs(confusion, self.class_names)
            write_confused_pairs(pairs, Path(self.trainer.default_root_dir) / "confused_pairs.csv")
            if pairs:
                log.info("most confused classes, %s (true -> predicted: images, share of the true class): %s", split,
                         "; ".join(f"{t} -> {p}: {n} ({share:.1%})" for t, p, n, share in pairs))  # fmt: skip
        self.test_class_acc.reset()
        self.test_confusion.reset()
        self.test_calibration.reset()


class HardestImages:
    """The ``count`` test images of highest loss seen so far, kept on the CPU (only those leave the device)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.images = self.preds = self.labels = self.losses = None

    def offer(self, images: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor) -> None:
        if self.count <= 0:
            return
        top = losses.topk(min(self.count, len(losses))).indices
        parts = [t[top].detach().float().cpu() if t is images else t[top].detach().cpu()
                 for t in (images, preds, labels, losses)]  # fmt: skip
        if self.losses is not None:
            parts = [torch.cat([kept, new]) for kept, new in zip((self.images, self.preds, self.labels, self.losses),
                                                                 parts)]  # fmt: skip
        keep = parts[3].topk(min(self.count, len(parts[3]))).indices
        self.images, self.preds, self.labels, self.losses = (t[keep] for t in parts)

    def taken(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
        """The images, predictions, labels and losses, highest loss first; the store is emptied."""
        order = self.losses.argsort(descending=True)
        out = (self.images[order], self.preds[order], self.labels[order], self.losses[order].tolist())
        self.images = self.preds = self.labels = self.losses = None
        return out


def confused_pairs(
    confusion: torch.Tensor, class_names: Sequence[str], count: int = 5
) -> list[tuple[str, str, int, float]]:
    """The ``count`` most frequent mistakes of a confusion matrix (rows: true class): ``(true, predicted, images,
    share of the true class's images)``, most frequent first; only pairs that occurred."""
    confusion = confusion.detach().cpu().long()
    mistakes = confusion.clone()
    mistakes.fill_diagonal_(0)
    totals = confusion.sum(dim=1)
    values, flat = mistakes.flatten().topk(min(count, mistakes.numel()))
    n = confusion.shape[1]
    return [
        (class_names[int(i) // n], class_names[int(i) % n], int(v), int(v) / max(int(totals[int(i) // n]), 1))
        for v, i in zip(values, flat)
        if v > 0
    ]


def write_confused_pairs(pairs: Sequence[tuple[str, str, int, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true", "predicted", "images", "share_of_true"])
        writer.writerows((t, p, n, f"{share:.4f}") for t, p, n, share in pairs)
