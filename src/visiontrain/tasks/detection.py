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

Serving (``DetectionServing``): the network runs and is exported as ``Detections``, one image of any size per
call; ``predict.py`` writes ``predictions.json`` (COCO results with the dataset's own category ids) and each
image with its boxes drawn; an export is checked by pairing its detections with PyTorch's.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.detection import MeanAveragePrecision
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from visiontrain.data.spec import DataSpec
from visiontrain.errors import UserError
from visiontrain.tasks.base import OptimizerFactory, SchedulerFactory, VisionTask
from visiontrain.tasks.detection_review import (
    RECALL_POINTS,
    DetectionConfusionMatrix,
    class_average_precisions,
    precision_curves,
    write_class_table,
)
from visiontrain.tasks.figures import confusion_matrix_figure, plots_dir, pr_curves_figure, publish_figure
from visiontrain.tasks.serving import (
    ExportedCall,
    LoadedModel,
    TaskServing,
    export_torchscript,
    finish_onnx,
    quiet_exporter_logs,
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


def draw_detections(
    image: torch.Tensor, target: Target, pred: Target, class_names: list[str], score_threshold: float, size: int
) -> torch.Tensor:
    """uint8 ``(3, size, size)``: the image with ground truth (green) and predictions (red, ``name score``)."""
    canvas = (image.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()
    keep = pred["scores"] >= score_threshold
    if "masks" in pred and keep.any():
        canvas = draw_segmentation_masks(canvas, pred["masks"][keep][:, 0].cpu() > 0.5, alpha=0.4, colors="red")
    if len(target["boxes"]):
        canvas = draw_bounding_boxes(canvas, target["boxes"].cpu(), colors="lime", width=2)
    if keep.any():
        labels = [
            f"{class_names[int(label) - 1]} {score:.2f}"
            for label, score in zip(pred["labels"][keep].tolist(), pred["scores"][keep].tolist())
        ]
        canvas = draw_bounding_boxes(canvas, pred["boxes"][keep].cpu(), labels=labels, colors="red", width=2)
    # letterbox into size x size so images of any shape tile into one grid
    height, width = canvas.shape[-2:]
    scale = size / max(height, width)
    canvas = F.resize(canvas, [max(1, round(height * scale)), max(1, round(width * scale))], antialias=True)
    return F.pad(canvas, [0, 0, size - canvas.shape[2], size - canvas.shape[1]])


class DetectionModule(VisionTask):
    """Trains ``net`` (a :class:`visiontrain.models.detection.Detector`) on lists of images and targets.

    Only plain values are saved as hyperparameters, so checkpoints load with ``weights_only=True``.
    """

    task = "detection"

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
        self.class_names = [str(i) for i in range(1, num_classes + 1)]  # labels 1..K; 0 is background
        # the dataset's own id of each label (COCO's are sparse); saved in checkpoints for predict/export
        self.category_ids = list(range(1, num_classes + 1))
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
        if spec.category_ids and len(spec.category_ids) == len(self.category_ids):
            self.category_ids = list(spec.category_ids)

    def forward(self, images: list[torch.Tensor], targets: list[Target] | None = None) -> Any:
        return self.net(images, targets)

    # --- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: tuple[list[torch.Tensor], list[Target]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses: dict[str, torch.Tensor] = self.net(images, targets)
        loss = sum(losses.values())
        n = len(images)
        if self.trainer._logger_connector.should_update_logs:
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


# --- serving ------------------------------------------------------------------------------------
DETECTION_OUTPUTS = ("boxes", "labels", "scores", "masks")
# the TorchScript-based exporter's opset for detectors (torchvision's detection ops need >= 11)
DETECTOR_OPSET = 17


class Detections(torch.nn.Module):
    """A detector on ONE image ``(3, H, W)`` of any size, values in [0, 1], returning a tuple
    ``(boxes, labels, scores[, masks])`` with labels ``1..K``: the exported form (ONNX and TorchScript
    take tensors, not lists of dicts). Several images are several calls."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.net([image])[0]
        return tuple(output[name] for name in DETECTION_OUTPUTS if name in output)


def as_detections(outputs: Any) -> dict[str, torch.Tensor]:
    """An exported detector's output tuple (tensors or arrays) -> the ``{boxes, labels, scores[, masks]}`` dict."""
    return {name: torch.as_tensor(value) for name, value in zip(DETECTION_OUTPUTS, outputs)}


class DetectionServing(TaskServing):
    """Detectors take a list of images of any size (they resize and normalise inside) and return one dict of
    ``boxes``, ``labels``, ``scores`` (and ``masks``) per image. Exported through the TorchScript-based ONNX
    exporter (``dynamo=False``): torch.export cannot trace their data-dependent shapes (the number of boxes after
    NMS), while torchvision's detectors carry code paths written for that tracer, so one file takes an image of
    any height and width."""

    task = "detection"
    min_check_images = 2

    def exported_form(self, net: nn.Module) -> nn.Module:
        return Detections(net)

    def collate(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return images

    def checkpoint_runner(self, module: nn.Module, device: str, tta: str = "none") -> Callable[[Any], Any]:
        @torch.no_grad()
        def run(images: list[torch.Tensor]) -> list[Target]:
            # batched only with images of the same size: a batch pads its images to a common size, which
            # would make an image's detections depend on its neighbours (and differ from the exported file's)
            outputs: list[Any] = [None] * len(images)
            for shape in {tuple(image.shape) for image in images}:
                same = [k for k, image in enumerate(images) if tuple(image.shape) == shape]
                batch = [images[k].to(device, non_blocking=True) for k in same]
                for k, output in zip(same, augmented(self.task, tta, module.net, batch)):
                    outputs[k] = {key: value.cpu() for key, value in output.items()}
            return outputs

        return run

    def exported_runner(self, call: ExportedCall, fixed_batch: int | None) -> Callable[[Any], Any]:
        return lambda images: [as_detections(call(image)) for image in images]  # one image per call, as exported

    def export_examples(self, model: LoadedModel, images: list[torch.Tensor] | None, count: int) -> list[torch.Tensor]:
        """The given images at their own sizes, else random images of two shapes (landscape, portrait), so the
        check also covers a size other than the one exported with."""
        if images is None:
            generator = torch.Generator().manual_seed(0)
            shapes = [(3, 240, 320), (3, 320, 240)]
            images = [
                torch.randint(0, 256, shapes[i % 2], dtype=torch.uint8, generator=generator) for i in range(count)
            ]
        return [image.to(torch.float32) / 255 for image in images]  # detectors resize and normalise inside

    def export(
        self, model: LoadedModel, examples: list[torch.Tensor], path: Path, fmt: str, options: DictConfig
    ) -> None:
        if options.dynamic_batch:
            raise UserError(
                "export.dynamic_batch=true does not apply to detectors: their exported file takes one image of any "
                "size per call; leave it false."
            )
        if fmt == "onnx":
            export_detector_onnx(model, examples[0], path)
        else:
            export_torchscript(model, examples[0], path)

    def check_export(
        self,
        model: LoadedModel,
        exported: LoadedModel,
        examples: list[torch.Tensor],
        path: Path,
        fmt: str,
        options: DictConfig,
    ) -> dict[str, float]:
        net = model.module.net
        cut_offs = (net.box_score_thresh, net.detections_per_img)
        worst = match_detections(
            model.run(examples), exported.run(examples), *cut_offs, options.tolerance, options.box_tolerance
        )
        sizes = ", ".join(sorted({"x".join(map(str, image.shape[1:])) for image in examples}))
        log.info(
            "exported %s (%s); on %d images (%s) %d detections matched PyTorch's, %d did not; largest |difference|: "
            "boxes %.3g px, scores %.3g%s", path, fmt, len(examples), sizes, worst["matched"], worst["unmatched"],
            worst["boxes"], worst["scores"], f", mask probabilities {worst['masks']:.3g}" if worst["masks"] else "",
        )  # fmt: skip
        if worst["unmatched"] or worst["boxes"] > options.box_tolerance or worst["scores"] > options.tolerance:
            raise UserError(
                f"{path} detects differently from the PyTorch model: {worst['unmatched']} detections without a "
                f"partner within export.box_tolerance={options.box_tolerance} px and "
                f"export.tolerance={options.tolerance}."
            )
        if worst["masks"] > options.mask_tolerance:
            raise UserError(
                f"{path}'s masks differ from the PyTorch model's by {worst['masks']:.3g} "
                f"(> export.mask_tolerance={options.mask_tolerance})."
            )
        return {
            "max_abs_difference": worst["scores"],
            "max_box_difference": worst["boxes"],
            "max_mask_difference": worst["masks"],
            "detections": worst["matched"],
        }

    def writer(self, output: Path, model: LoadedModel, options: DictConfig) -> DetectionWriter:
        return DetectionWriter(output, model.class_names, model.category_ids, options.score_threshold)


def export_detector_onnx(model: LoadedModel, image: torch.Tensor, path: Path) -> None:
    """One image ``(3, H, W)`` in, with height and width variable; boxes, labels, scores (and masks) out."""
    outputs = [name for name in DETECTION_OUTPUTS if name != "masks" or model.module.net.predicts_masks]
    dynamic_axes = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in outputs}}
    try:
        with warnings.catch_warnings(), quiet_exporter_logs():
            warnings.simplefilter("ignore")  # tracer warnings about Python values: torchvision's code expects them
            torch.onnx.export(
                model.module, (image,), str(path), dynamo=False, opset_version=DETECTOR_OPSET,
                input_names=["image"], output_names=outputs, dynamic_axes=dynamic_axes,
            )  # fmt: skip
    except Exception as err:  # a family or option the tracer cannot follow: say which, in one sentence
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(
            f"the {model.module.net.family} detector cannot be exported to ONNX ({type(err).__name__}: {reason}); "
            "predict.py ckpt_path=... runs it from the checkpoint."
        ) from err
    finish_onnx(model, path, "torch.onnx.export(dynamo=False)")


def match_detections(
    expected: list[dict[str, torch.Tensor]],
    got: list[dict[str, torch.Tensor]],
    score_thresh: float,
    detections_per_img: int,
    score_tolerance: float,
    box_tolerance: float,
) -> dict[str, float]:
    """Pair each detection PyTorch made with the exported model's detection of the same label and the
    nearest box and score, image by image; return the largest differences over the pairs and how many
    detections found no partner within the tolerances.

    Pairs are found by content, not position: detections with (nearly) equal scores may come in either
    order. A detection whose score is within ``score_tolerance`` of a cut-off (the detector's
    ``score_thresh``, or the lowest kept score once ``detections_per_img`` are kept) may rightly be
    kept on one side only, and is not counted as unmatched.
    """

    def edge(prediction: dict[str, torch.Tensor]) -> float:
        full = len(prediction["scores"]) >= detections_per_img
        return float(prediction["scores"].min()) if full else score_thresh

    worst = {"boxes": 0.0, "scores": 0.0, "masks": 0.0, "matched": 0, "unmatched": 0}
    for ref, out in zip(expected, got):
        cutoff = max(edge(ref), edge(out)) + score_tolerance
        free = torch.ones(len(out["scores"]), dtype=torch.bool)
        for k in range(len(ref["scores"])):
            box_difference = (out["boxes"] - ref["boxes"][k]).abs().amax(dim=1)
            score_difference = (out["scores"] - ref["scores"][k]).abs()
            cost = torch.maximum(box_difference / box_tolerance, score_difference / score_tolerance)
            cost[~free | (out["labels"] != ref["labels"][k])] = torch.inf
            best = int(cost.argmin()) if len(cost) else -1
            if best < 0 or not cost[best] <= 1:
                if float(ref["scores"][k]) >= cutoff:
                    worst["unmatched"] += 1
                    if best >= 0 and torch.isfinite(cost[best]):  # report how far off the nearest one is
                        worst["boxes"] = max(worst["boxes"], float(box_difference[best]))
                        worst["scores"] = max(worst["scores"], float(score_difference[best]))
                continue
            free[best] = False
            worst["matched"] += 1
            worst["boxes"] = max(worst["boxes"], float(box_difference[best]))
            worst["scores"] = max(worst["scores"], float(score_difference[best]))
            if "masks" in ref:
                worst["masks"] = max(worst["masks"], float((out["masks"][best] - ref["masks"][k]).abs().max()))
        worst["unmatched"] += int((free & (out["scores"] >= cutoff)).sum())
    return worst


class DetectionWriter:
    """``predictions.json`` in the COCO results format (plus the file name; RLE masks for Mask R-CNN) with
    the dataset's own category ids (sparse for COCO data; 1..K otherwise), and a copy of each image with
    its boxes (and masks) drawn and labelled."""

    def __init__(self, output: Path, class_names: list[str], category_ids: list[int] | None, threshold: float) -> None:
        self.output = output
        self.names = class_names
        self.category_ids = category_ids or list(range(1, len(self.names) + 1))
        self.threshold = threshold
        self.results: list[dict] = []
        self.image_id = 0

    def add(self, path: Path, image: torch.Tensor, prediction: dict[str, torch.Tensor]) -> None:
        from pycocotools import mask as coco_mask

        self.image_id += 1
        keep = prediction["scores"] >= self.threshold
        boxes, labels, scores = prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep]
        masks = prediction["masks"][keep][:, 0] >= 0.5 if "masks" in prediction else None
        for k, (box, label, score) in enumerate(zip(boxes.tolist(), labels.tolist(), scores.tolist())):
            x0, y0, x1, y1 = box
            entry = {
                "image_id": self.image_id, "file": str(path), "category_id": self.category_ids[label - 1],
                "category_name": self.names[label - 1], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            }  # fmt: skip
            if masks is not None:
                rle = coco_mask.encode(np.asfortranarray(masks[k].numpy().astype(np.uint8)))
                entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            self.results.append(entry)
        drawn = image
        if masks is not None and len(masks):
            drawn = draw_segmentation_masks(drawn, masks, alpha=0.4)
        captions = [f"{self.names[label - 1]} {score:.2f}" for label, score in zip(labels.tolist(), scores.tolist())]
        drawn = draw_bounding_boxes(drawn, boxes, labels=captions, colors="red", width=2)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(self.output / f"{path.stem}_detections.png")

    def close(self) -> None:
        (self.output / "predictions.json").write_text(json.dumps(self.results))
