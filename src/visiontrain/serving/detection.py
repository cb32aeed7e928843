"""Detection put to use: the network runs and is exported as ``Detections``, one image of any size per call;
``predict.py`` writes ``predictions.json`` (COCO results with the dataset's own category ids) and each image with
its boxes drawn; an export is checked by pairing its detections with PyTorch's (``match_detections``)."""

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
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from visiontrain.errors import UserError
from visiontrain.serving.base import (
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

    def exported_form(self, net: nn.Module, temperature: float | None = None) -> nn.Module:
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
