"""torchvision detectors by family and variant, sized for the data's classes, behind one call convention.

Labels everywhere in visiontrain are ``1..K`` for the K object classes (0 is never an object). How a
family treats background differs, so :class:`Detector` adapts the labels at the boundary:

- softmax families (Faster R-CNN, Mask R-CNN, SSDlite) score an explicit background class 0, so they
  get ``K + 1`` outputs and take the labels as they are;
- sigmoid families (RetinaNet, FCOS) have no background class, so they get ``K`` outputs and see the
  labels shifted to ``0..K-1`` (and their predictions are shifted back).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torchvision import models

from visiontrain.errors import UserError
from visiontrain.models.weights import is_file, load_file, torchvision_state_dict

log = logging.getLogger(__name__)

# family -> variant -> torchvision builder name
VARIANTS: dict[str, dict[str, str]] = {
    "fasterrcnn": {
        v: f"fasterrcnn_{v}"
        for v in ("mobilenet_v3_large_320_fpn", "mobilenet_v3_large_fpn", "resnet50_fpn", "resnet50_fpn_v2")
    },
    "maskrcnn": {v: f"maskrcnn_{v}" for v in ("resnet50_fpn", "resnet50_fpn_v2")},
    "retinanet": {v: f"retinanet_{v}" for v in ("resnet50_fpn", "resnet50_fpn_v2")},
    "fcos": {"resnet50_fpn": "fcos_resnet50_fpn"},
    "ssdlite": {"mobilenet_v3_large": "ssdlite320_mobilenet_v3_large"},
}
SIGMOID_FAMILIES = ("retinanet", "fcos")
# the sub-modules whose shape depends on the number of classes: replaced when COCO weights are loaded
CLASS_HEADS = {
    "fasterrcnn": ("roi_heads.box_predictor",),
    "maskrcnn": ("roi_heads.box_predictor", "roi_heads.mask_predictor"),
    "retinanet": ("head.classification_head",),
    "fcos": ("head.classification_head",),
    "ssdlite": ("head.classification_head",),
}


class Detector(nn.Module):
    """A torchvision detector taking visiontrain's labels ``1..K`` (see the module docstring).

    ``forward(images, targets)`` returns the loss dict in training mode and one prediction dict
    (``boxes``, ``labels``, ``scores`` and for Mask R-CNN ``masks``) per image in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        family: str,
        num_classes: int,
        box_score_thresh: float = 0.05,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.num_classes = num_classes
        self.label_offset = 1 if family in SIGMOID_FAMILIES else 0
        # the cut-offs applied inside the model (export.py needs them to tell edge cases from errors)
        self.box_score_thresh = box_score_thresh
        self.detections_per_img = detections_per_img

    @property
    def predicts_masks(self) -> bool:
        return self.family == "maskrcnn"

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        if targets is not None and self.label_offset:
            targets = [{**t, "labels": t["labels"] - self.label_offset} for t in targets]
        output = self.model(images, targets)
        if not self.training and self.label_offset:
            output = [{**p, "labels": p["labels"] + self.label_offset} for p in output]
        return output


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, value)


def build_detector(
    family: str,
    variant: str,
    num_classes: int,
    weights: str | None = None,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int | None = None,
    min_size: int | list[int] | None = None,
    max_size: int | None = None,
    box_score_thresh: float = 0.05,
    detections_per_img: int = 100,
    **kwargs: Any,
) -> Detector:
    """A torchvision ``<family>_<variant>`` detector for ``num_classes`` object classes (background excluded).

    ``weights`` (COCO, e.g. ``DEFAULT``/``COCO_V1``) load the whole detector and replace its
    class-dependent heads with fresh ones for ``num_classes``; ``weights_backbone`` (ImageNet) load
    the backbone only. Both null: everything is trained from scratch. ``min_size``/``max_size`` null
    keep the variant's own input size (800/1333 for ResNet-50 FPN, 320/640 for the 320 variant; SSDlite
    resizes to a square of ``min_size``, 320 by default). Other keyword arguments go to the torchvision builder.

    Either weights option also takes a local file (``.pth``/``.pt``/``.safetensors`` or a visiontrain
    checkpoint): the detector is then built as from scratch (trainable BatchNorm, every stage trainable;
    ``finetune=staged`` freezes the backbone) and the file's tensors loaded by name.
    """
    if family not in VARIANTS:
        raise UserError(f"model.net.family={family!r} is not one of {', '.join(VARIANTS)}.")
    if variant not in VARIANTS[family]:
        choices = ", ".join(VARIANTS[family])
        raise UserError(f"model.net.variant={variant!r} is not a {family} variant; choose one of {choices}.")
    if num_classes < 1:
        raise UserError(f"a detector needs at least one object class, got num_classes={num_classes}.")
    name = VARIANTS[family][variant]
    if min_size is not None and not isinstance(min_size, int):  # a list from the config: multi-scale training
        min_size = tuple(int(s) for s in min_size)
    outputs = num_classes if family in SIGMOID_FAMILIES else num_classes + 1

    weights_file = weights if is_file(weights) else None
    backbone_file = weights_backbone if is_file(weights_backbone) else None
    if backbone_file and family == "ssdlite":
        # torchvision splits MobileNetV3's layers into SSDlite's two feature stages; a file keyed by
        # MobileNetV3's names does not map onto them by name
        raise UserError(
            "SSDlite cannot take a backbone weights file (model.net.weights_backbone): pass the backbone by name "
            "(IMAGENET1K_V1; offline, with its file in $TORCH_HOME/hub/checkpoints) or a whole SSDlite file as "
            "model.net.weights."
        )
    if weights_file or backbone_file:  # a local file: built as from scratch, then the file's tensors loaded
        weights = weights_backbone = None
    if weights:  # into the torch hub cache once (or one sentence offline); the builder below reads it there
        torchvision_state_dict(name, weights, "model.net.weights")
    elif weights_backbone:
        backbone_name = "resnet50" if "resnet50" in variant else "mobilenet_v3_large"
        torchvision_state_dict(backbone_name, weights_backbone, "model.net.weights_backbone")
    options: dict[str, Any] = dict(kwargs)
    if trainable_backbone_layers is not None:
        options["trainable_backbone_layers"] = trainable_backbone_layers
    if family in ("fasterrcnn", "maskrcnn"):
        options.update(box_score_thresh=box_score_thresh, box_detections_per_img=detections_per_img)
    else:
        options.update(score_thresh=box_score_thresh, detections_per_img=detections_per_img)
    if family != "ssdlite":  # SSDlite's input size is fixed at build time; set below
        if min_size is not None:
            options["min_size"] = min_size
        if max_size is not None:
            options["max_size"] = max_size

    if weights:
        # COCO weights fix the head at 91 classes: build with them, then swap in heads sized for our
        # classes (taken from a fresh model so they are initialised as torchvision initialises them)
        model = models.get_model(name, weights=weights, **options)
        fresh = models.get_model(name, weights=None, weights_backbone=None, num_classes=outputs, **options)
        for path in CLASS_HEADS[family]:
            _set(model, path, _get(fresh, path))
    else:
        model = models.get_model(name, weights=None, weights_backbone=weights_backbone, num_classes=outputs, **options)

    if family == "ssdlite" and min_size is not None:
        size = min_size if isinstance(min_size, int) else min(min_size)
        model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (size,), size, (size, size)
    if weights_file:  # a whole detector (torchvision's, or a visiontrain run's): heads of another shape stay fresh
        load_file(model, weights_file)
    elif backbone_file:
        load_file(model.backbone.body, backbone_file)
    return Detector(model, family, num_classes, box_score_thresh, detections_per_img)
