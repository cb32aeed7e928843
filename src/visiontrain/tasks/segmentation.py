"""Semantic segmentation: per-pixel classification with cross-entropy and/or Dice loss, mIoU metrics; its serving
writes an index-PNG mask and a colour overlay per image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)
from torchvision.utils import draw_segmentation_masks, make_grid

from visiontrain.data.spec import DataSpec
from visiontrain.errors import UserError
from visiontrain.plots.colors import class_colors
from visiontrain.plots.figures import confusion_matrix_figure, per_class_figure, publish_figure
from visiontrain.tasks.base import (
    OptimizerFactory,
    SchedulerFactory,
    VisionTask,
    class_weight_tensor,
    plain_class_weights,
)
from visiontrain.tasks.running import TrainJaccardIndex, class_map
from visiontrain.tasks.tta import augmented


def segmentation_metrics(num_classes: int, ignore_index: int) -> MetricCollection:
    """mIoU, pixel accuracy and Dice (= F1 over pixels), all leaving out ``ignore_index`` pixels."""
    return MetricCollection(
        {
            "miou": MulticlassJaccardIndex(num_classes, ignore_index=ignore_index, average="macro"),
            "pixel_acc": MulticlassAccuracy(num_classes, ignore_index=ignore_index, average="micro"),
            "dice": MulticlassF1Score(num_classes, ignore_index=ignore_index, average="macro"),
        }
    )


class SegmentationModule(VisionTask):
    """Trains ``net`` (logits ``(N, C, H, W)``, or torchvision's ``{"out", "aux"}`` dict) on index masks.

    Loss: ``ce_weight`` x cross-entropy + ``dice_weight`` x Dice loss (segmentation_models_pytorch), both
    ignoring ``ignore_index``; an auxiliary head adds ``aux_weight`` x the same loss. ``class_weights`` weigh the
    cross-entropy's classes: null, a weight per class, or ``balanced`` (the inverse pixel frequencies of the training
    masks). ``tta``: the test-time augmentation of validation and test (visiontrain.tasks.tta: none | flip |
    flip_scale). Only plain values are saved as hyperparameters.
    """

    task = "segmentation"

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        ignore_index: int = 255,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
        class_weights: Sequence[float] | str | None = None,
        aux_weight: float = 0.5,
        decay_norm_and_bias: bool = False,
        compile: bool = False,
        channels_last: bool | str = False,
        overlay_every_n_epochs: int = 1,
        overlay_images: int = 8,
        tta: str = "none",
        **architecture: Any,
    ) -> None:
        super().__init__(
            net, optimizer, scheduler, num_classes, decay_norm_and_bias, compile, channels_last, **architecture
        )
        self.set_tta(tta, "model.tta")
        class_weights = plain_class_weights(class_weights, num_classes)  # before save_hyperparameters reads it
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        if ce_weight <= 0 and dice_weight <= 0:
            raise UserError("model.ce_weight and model.dice_weight are both 0: there is no loss to train with.")
        # the class weights are a buffer of the loss: they move with the module's device and are saved in checkpoints
        weight = class_weight_tensor(class_weights, num_classes)
        self.cross_entropy = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.dice = None
        if dice_weight > 0:
            from segmentation_models_pytorch.losses import DiceLoss

            self.dice = DiceLoss(mode="multiclass", ignore_index=ignore_index)

        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # MulticlassJaccardIndex's value with a cheaper per-step update (visiontrain.tasks.running)
        self.train_metrics = MetricCollection(
            {"miou": TrainJaccardIndex(num_classes, ignore_index=ignore_index, validate_args=False)}, prefix="train/"
        )
        self.val_metrics = segmentation_metrics(num_classes, ignore_index).clone(prefix="val/")
        self.test_metrics = segmentation_metrics(num_classes, ignore_index).clone(prefix="test/")
        self.val_miou_best = MaxMetric()
        self.val_miou_best.persistent(True)  # saved in checkpoints: a resumed run keeps its best so far
        self.test_class_iou = MulticlassJaccardIndex(num_classes, ignore_index=ignore_index, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
        self._overlay_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # --- set-up ---------------------------------------------------------------------------------
    def check_data(self, spec: DataSpec) -> None:
        super().check_data(spec)
        self.check_num_classes(spec)
        logits = self.logits(self.dry_run(spec.input_shape, spec.name))
        _, height, width = spec.input_shape
        if tuple(logits.shape[1:]) != (spec.num_classes, height, width):
            raise UserError(
                f"{type(self.net).__name__} outputs {tuple(logits.shape[1:])} per image; {spec.name} needs "
                f"({spec.num_classes}, {height}, {width}): set its classes to ${{data.num_classes}}."
            )

    @staticmethod
    def logits(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        return output["out"] if isinstance(output, dict) else output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.net(self.to_memory_format(images)))

    def evaluation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for validation and test under the test-time augmentation ``tta`` (with flips or scales: the log of
        the mean probabilities, which the losses and the argmax take as logits)."""
        return augmented(self.task, self.tta, self, images)

    def class_weights(self) -> torch.Tensor | None:
        return self.cross_entropy.weight

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        loss = self.hparams.ce_weight * self.cross_entropy(logits, masks) if self.hparams.ce_weight > 0 else 0.0
        if self.dice is not None:
            loss = loss + self.hparams.dice_weight * self.dice(logits, masks)
        return loss

    # --- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        output = self.net(self.to_memory_format(images))
        logits = self.logits(output)
        loss = self.loss(logits, masks)
        if isinstance(output, dict) and "aux" in output:
            loss = loss + self.hparams.aux_weight * self.loss(output["aux"], masks)
        self.train_loss.update(loss.detach())
        self.train_metrics["miou"].update(class_map(logits.detach()), masks)
        if self.logs_this_step():  # only where loggers write: self.log is not free
            self.log("train/loss_step", loss.detach(), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss, sync_dist=True)
        self.log_dict(self.train_metrics)

    def _evaluate(self, batch, loss_metric: MeanMetric, metrics: MetricCollection) -> torch.Tensor:
        images, masks = batch
        logits = self.evaluation_logits(images)
        loss_metric.update(self.loss(logits, masks), weight=len(masks))
        preds = class_map(logits)
        metrics.update(preds, masks)
        return preds

    def validation_step(self, batch, batch_idx: int) -> None:
        preds = self._evaluate(batch, self.val_loss, self.val_metrics)
        if batch_idx == 0 and self._overlay_batch is None:
            n = self.hparams.overlay_images
            self._overlay_batch = (batch[0][:n].detach().cpu(), batch[1][:n].cpu(), preds[:n].cpu())

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss, prog_bar=True)
        miou = self.val_metrics["miou"].compute()
        self.log_dict(self.val_metrics, prog_bar=True)
        if self.trainer.sanity_checking:  # a few batches before training: not an epoch's result
            self._overlay_batch = None
            return
        self.val_miou_best.update(miou)
        self.log("val/miou_best", self.val_miou_best.compute(), sync_dist=True)
        every = self.hparams.overlay_every_n_epochs
        if self._overlay_batch is not None and every and self.current_epoch % every == 0:
            self.log_overlays("val/overlays", *self._overlay_batch)
        self._overlay_batch = None

    def test_step(self, batch, batch_idx: int) -> None:
        preds = self._evaluate(batch, self.test_loss, self.test_metrics)
        self.test_class_iou.update(preds, batch[1])
        self.test_confusion.update(preds, batch[1])

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log_dict(self.test_metrics)
        per_class = self.test_class_iou.compute()
        self.log_dict({f"test/iou_class/{n}": v for n, v in zip(self.class_names, per_class)}, sync_dist=True)
        title = f"per-class IoU, test split (mIoU {float(self.test_metrics['miou'].compute()):.3f})"
        publish_figure(self.trainer, "per_class_iou", per_class_figure(per_class, self.class_names, "IoU", title))
        confusion = self.test_confusion.compute()
        title = "pixel confusion matrix, test split (rows: true class)"
        figure = confusion_matrix_figure(confusion, self.class_names, title, cells="rate")
        publish_figure(self.trainer, "confusion_matrix", figure, tag="test/confusion_matrix")
        self.test_class_iou.reset()
        self.test_confusion.reset()

    # --- review ---------------------------------------------------------------------------------
    def log_overlays(self, tag: str, images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor) -> None:
        """Rows of [image | true mask overlay | predicted mask overlay] into TensorBoard."""
        experiment = getattr(self.logger, "experiment", None)
        if not self.trainer.is_global_zero or not hasattr(experiment, "add_image"):
            return
        colors = class_colors(self.hparams.num_classes)
        classes = torch.arange(self.hparams.num_classes)[:, None, None]
        tiles = []
        for image, mask, pred in zip(images, masks, preds):
            lo, hi = image.amin(), image.amax()  # each image min-max scaled: the normalisation is the data's
            picture = ((image - lo) / (hi - lo).clamp(min=1e-6) * 255).to(torch.uint8)
            tiles.append(picture)
            for target in (mask, pred):
                tiles.append(draw_segmentation_masks(picture, target[None] == classes, alpha=0.5, colors=colors))
        experiment.add_image(tag, make_grid(tiles, nrow=3, padding=2), global_step=self.global_step)
