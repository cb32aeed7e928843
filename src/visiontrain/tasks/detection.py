"""Object detection and instance segmentation: one LightningModule around a torchvision detector.

Training logs the detector's loss and each of its components (``train/loss_classifier``,
``train/loss_box_reg``, ``train/loss_objectness``, ``train/loss_rpn_box_reg``, ``train/loss_mask``, ...).
Validation and test compute COCO mAP with torchmetrics' ``MeanAveragePrecision`` (COCO's own
evaluation code underneath): ``map`` (AP@[.50:.95]), ``map_50``, ``map_75``, by object size, and
recall; with masks also ``segm_map``, ... for the instance masks. ``val/map_best`` is the best
``val/map`` so far; at test, per-class AP (``test/map_class/<name>``). Every
``image_log_every_n_epochs`` a grid of validation images with ground truth (green) and predictions
(red, score >= ``image_score_threshold``) goes to TensorBoard.

torchvision detectors compute losses only in training mode, so there is no validation loss.

``tta=flip`` (``model.tta``; eval.py's and predict.py's ``tta``): the detector on each image and its mirror image,
the mirror's boxes flipped back, the union merged by NMS per class (visiontrain.tasks.tta).
How a trained detector is served and exported: visiontrain.serving.detection.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.detection import MeanAveragePrecision
from torchvision.utils import make_grid

from visiontrain.data.spec import DataSpec
from visiontrain.errors import UserError
from visiontrain.plots.detections import draw_detections
from visiontrain.plots.figures import confusion_matrix_figure, plots_dir, pr_curves_figure, publish_figure
from visiontrain.tasks.base import OptimizerFactory, SchedulerFactory, VisionTask
from visiontrain.tasks.detection_review import (
    RECALL_POINTS,
    DetectionConfusionMatrix,
    class_average_precisions,
    precision_curves,
    write_class_table,
)
from visiontrain.tasks.tta import augmented

log = logging.getLogger("visiontrain")

Target = dict[str, torch.Tensor]

# summary values of MeanAveragePrecision logged under <stage>/<name>
SUMMARY = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def average_precision(iou_types: tuple[str, ...], extended_summary: bool = False) -> MeanAveragePrecision:
    """COCO mAP; ``extended_summary`` keeps COCO's precision array, from which the test's per-class AP and
    precision-recall curves are read (rather than torchmetrics' ``class_metrics``, which evaluates again per class)."""
    return MeanAveragePrecision(
        box_format="xyxy", iou_type=iou_types, extended_summary=extended_summary, backend="pycocotools"
    )


def metric_targets(targets: list[Target], with_masks: bool) -> list[Target]:
    keys = ("boxes", "labels", "iscrowd", "area")
    out = [{k: t[k] for k in keys if k in t} for t in targets]
    if with_masks:
        for o, t in zip(out, targets):
            o["masks"] = t["masks"].bool()
    return out


def metric_predictions(preds: list[Target], with_masks: bool) -> list[Target]:
    out = [{k: p[k] for k in ("boxes", "labels", "scores")} for p in preds]
    if with_masks:  # Mask R-CNN gives per-instance probabilities (N, 1, H, W); COCO scores binary masks
        for o, p in zip(out, preds):
            o["masks"] = p["masks"][:, 0] > 0.5
    return out


def summary_values(result: dict[str, torch.Tensor], iou_types: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``{"map": ..., "segm_map": ...}``: box metrics unprefixed, mask metrics prefixed ``segm_``."""
    values = {}
    for iou_type in iou_types:
        prefix = f"{iou_type}_" if len(iou_types) > 1 else ""
        for name in SUMMARY:
            values[name if iou_type == "bbox" else f"segm_{name}"] = result[prefix + name]
    return values


class DetectionModule(VisionTask):
    """Trains ``net`` (a :class:`visiontrain.models.detection.Detector`) on lists of images and targets.

    Only plain values are saved as hyperparameters, so checkpoints load with ``weights_only=True``.
    """

    task = "detection"
    headline = ("loss", "map", "map_50", "map_best", "segm_map", "segm_map_50")

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        masks: bool = False,
        decay_norm_and_bias: bool = False,
        gradient_clip_norm: float | None = 10.0,
        val_images_logged: int = 8,
        image_log_every_n_epochs: int = 1,
        image_score_threshold: float = 0.5,
        tta: str = "none",
        channels_last: bool | str = False,
    ) -> None:
        # the detector's weights only: its transform batches the images itself, and a convolution with NHWC weights
        # computes in NHWC whatever the layout of its input (oneDNN, cuDNN)
        super().__init__(net, optimizer, scheduler, num_classes, decay_norm_and_bias, channels_last=channels_last)
        self.set_tta(tta, "model.tta")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        predicts_masks = bool(getattr(net, "predicts_masks", False))
        if masks != predicts_masks:
            raise UserError(
                f"model.masks={str(masks).lower()} but the network "
                f"{'predicts' if predicts_masks else 'does not predict'} instance masks; "
                f"set model.masks={str(predicts_masks).lower()}."
            )
        self.iou_types: tuple[str, ...] = ("bbox", "segm") if masks else ("bbox",)
        self.val_map = average_precision(self.iou_types)
        self.test_map = average_precision(self.iou_types, extended_summary=True)
        self.test_confusion = DetectionConfusionMatrix(num_classes, score_threshold=image_score_threshold)
        self.val_map_best = MaxMetric()
        self.val_map_best.persistent(True)  # saved in checkpoints: a resumed run keeps its best so far
        self._val_samples: list[torch.Tensor] = []

    # --- set-up ---------------------------------------------------------------------------------
    def check_data(self, spec: DataSpec) -> None:
        """Detectors resize every image themselves, so any height and width works (``input_shape`` is None for
        detection data); what must agree is the channel count and the number of classes."""
        super().check_data(spec)
        self.check_num_classes(spec, "object classes")
        if spec.input_shape is not None and spec.input_shape[0] != 3:
            raise UserError(
                f"torchvision detectors take RGB images but {spec.name} has {spec.input_shape[0]} channels."
            )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        spec = self.trainer.datamodule.spec if self.trainer.datamodule is not None else None
        if spec is None:
            return
        if self.hparams.masks and not spec.with_masks:
            raise UserError("the model predicts instance masks but the data is read without them; set data.masks=true.")

    def numbered_classes(self, num_classes: int) -> tuple[list[str], list[int] | None]:
        # labels 1..K (0 is background); the dataset's own id of each label (COCO's are sparse) replaces them at
        # set-up, and travels in checkpoints for predict and export
        return [str(i) for i in range(1, num_classes + 1)], list(range(1, num_classes + 1))

    def forward(self, images: list[torch.Tensor], targets: list[Target] | None = None) -> Any:
        return self.net(images, targets)

    # --- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: tuple[list[torch.Tensor], list[Target]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses: dict[str, torch.Tensor] = self.net(images, targets)
        loss = sum(losses.values())
        n = len(images)
        if self.logs_this_step():
            self.log("train/loss_step", loss.detach(), prog_bar=True, batch_size=n)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        for name, value in losses.items():
            name = name if name.startswith("loss") else f"loss_{name}"
            self.log(f"train/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def _predict(self, images: list[torch.Tensor], targets: list[Target], metric: MeanAveragePrecision) -> list[Target]:
        preds = augmented(self.task, self.tta, self.net, images)
        with_masks = self.hparams.masks
        metric.update(metric_predictions(preds, with_masks), metric_targets(targets, with_masks))
        return preds

    def _logging_images(self) -> bool:
        every = self.hparams.image_log_every_n_epochs
        return (
            self.hparams.val_images_logged > 0
            and every > 0
            and not self.trainer.sanity_checking
            and (self.current_epoch + 1) % every == 0
            and self.trainer.is_global_zero
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        preds = self._predict(images, targets, self.val_map)
        room = self.hparams.val_images_logged - len(self._val_samples)
        if room > 0 and self._logging_images():
            for image, target, pred in list(zip(images, targets, preds))[:room]:
                self._val_samples.append(
                    draw_detections(image, target, pred, self.class_names, self.hparams.image_score_threshold, 320)
                )

    def on_validation_epoch_end(self) -> None:
        values = summary_values(self.val_map.compute(), self.iou_types)
        self.val_map.reset()
        # already synchronised by torchmetrics; sync_dist only keeps Lightning from warning under DDP
        self.log_dict({f"val/{k}": v for k, v in values.items() if k != "map"}, sync_dist=True)
        self.log("val/map", values["map"], prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:  # a few batches before training: not an epoch's result
            self.val_map_best.update(values["map"])
            self.log("val/map_best", self.val_map_best.compute(), sync_dist=True)
        experiment = getattr(self.logger, "experiment", None)
        if self._val_samples and hasattr(experiment, "add_image"):
            grid = make_grid(torch.stack(self._val_samples), nrow=4, padding=4)
            experiment.add_image("val/predictions", grid, global_step=self.global_step)
        self._val_samples.clear()

    def test_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        preds = self._predict(images, targets, self.test_map)
        self.test_confusion.update(preds, targets)

    def on_test_epoch_end(self) -> None:
        result = self.test_map.compute()
        self.test_map.reset()
        values = {f"test/{k}": v for k, v in summary_values(result, self.iou_types).items()}
        classes = [int(label) for label in result["classes"].reshape(-1).tolist()]
        table: dict[str, torch.Tensor] = {}
        for iou_type in self.iou_types:
            prefix = f"{iou_type}_" if len(self.iou_types) > 1 else ""
            kind = "" if iou_type == "bbox" else "segm_"
            precision = result[f"{prefix}precision"]
            if precision.numel() == 0 or not classes:  # nothing detected and nothing to detect
                continue
            per_class = class_average_precisions(precision)
            table.update({f"{kind}{name}": ap for name, ap in per_class.items()})
            for label, ap in zip(classes, per_class["ap"]):
                if ap >= 0:  # -1: the class does not occur in the test split
                    values[f"test/{kind}map_class/{self.class_names[label - 1]}"] = ap.float()
            self.publish_pr_curves(precision, classes, "boxes" if iou_type == "bbox" else "masks")
        self.log_dict(values, sync_dist=True)
        if table and self.trainer.is_global_zero:
            path = plots_dir(self.trainer) / "per_class_ap.csv"
            write_class_table(path, self.class_names, self.category_ids, classes, table)
        names = [*self.class_names, "background"]
        title = f"confusion matrix, test split (IoU >= 0.5, score >= {self.hparams.image_score_threshold})"
        figure = confusion_matrix_figure(self.test_confusion.compute(), names, title)
        publish_figure(self.trainer, "confusion_matrix", figure, tag="test/confusion_matrix")
        self.test_confusion.reset()

    def publish_pr_curves(self, precision: torch.Tensor, classes: list[int], kind: str) -> None:
        at_50, mean = precision_curves(precision)
        curves = {
            self.class_names[label - 1]: (at_50[k].tolist(), mean[k].tolist())
            for k, label in enumerate(classes)
            if at_50[k].min() >= 0  # classes without ground truth have no curve
        }
        name = "pr_curves" if kind == "boxes" else "pr_curves_masks"
        figure = pr_curves_figure(RECALL_POINTS.tolist(), curves, f"test split, {kind}")
        publish_figure(self.trainer, name, figure, tag=f"test/{name}")

    # --- optimisation ---------------------------------------------------------------------------
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # detectors trained from scratch on small batches can blow up in the first steps; a norm clip of
        # the model's own (trainer.gradient_clip_val, when set, takes precedence) keeps them finite
        if gradient_clip_val is None and self.hparams.gradient_clip_norm:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.gradient_clip_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
