"""Test-time augmentation (TTA), one implementation per task, used wherever a task's predictions are made: the task
modules' validation and test (``model.tta``; ``tta=`` of eval.py) and a checkpoint's serving (``tta=`` of
predict.py). Exported files never carry it: export.py writes the plain network, and predict.py refuses ``tta=``
with ``model_path=``.

- classification ``flip``: the mean of the logits of each image and its mirror image; ``flip_translate``
  (airbench's multi-crop): half that, plus half the mean of the same over the image shifted one pixel up-left and
  one pixel down-right (reflect padding), six views in all;
- segmentation ``flip`` / ``flip_scale``: the mean of the softmax probabilities over each image and its mirror
  image (``flip``), at each of ``SCALES`` (``flip_scale``), every map resized back to the input's size; returned
  as log-probabilities, which everything that takes logits (argmax, cross-entropy, Dice's softmax) takes as they
  are;
- detection ``flip``: the detector on each image and on its mirror image, the mirror's boxes (and masks) flipped
  back, the union merged by NMS per class (``torchvision.ops.batched_nms``; not weighted boxes fusion: every box
  kept is one the detector drew).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as F
from torchvision.ops import batched_nms

from visiontrain import kinds
from visiontrain.errors import UserError

# flip_translate's shift in pixels (airbench trains with 2-pixel translations and tests at 1)
TRANSLATE = 1
# flip_scale's scales, each image resized by these factors
SCALES = (0.75, 1.0, 1.25)
# scaled sizes are rounded to multiples of this: encoders with output stride 32 (U-Net, FPN, ...) need them
SIZE_MULTIPLE = 32
# two boxes of one class overlapping more than this are one object (torchvision's Faster R-CNN and RetinaNet NMS)
MERGE_IOU = 0.5


def checked(task: str, mode: str, option: str = "tta") -> str:
    """``mode`` if ``task`` offers it; otherwise one sentence naming ``option`` (what the user typed)."""
    offered = ("none", *kinds.of(task).tta_modes)  # "none" first: the default
    if mode in offered:
        return mode
    if any(mode in kind.tta_modes for kind in kinds.KINDS.values()):
        raise UserError(f"{option}={mode} is not available for {task} models, which take {option}={'|'.join(offered)}.")
    raise UserError(f"{option}={mode!r}: choose one of {', '.join(offered)}.")


def augmented(task: str, mode: str, forward: Callable[[Any], Any], images: Any) -> Any:
    """``forward(images)`` under test-time augmentation ``mode``: what the task's evaluation and serving compute.
    ``forward``: a batch ``(N, C, H, W)`` -> logits (classification, segmentation), or a detector taking a list
    of ``(3, H, W)`` images and returning a dict of boxes, labels, scores (and masks) per image."""
    if mode == "none":
        return forward(images)
    return kinds.of(task).part("tta")(mode, forward, images)


# --- each kind's entry (visiontrain.kinds): (mode, forward, inputs) -> outputs ----------------------------------
def classification_tta(mode: str, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor):
    if mode == "flip_translate":
        return flip_translate_logits(forward, images, TRANSLATE)
    return flip_logits(forward, images)


def segmentation_tta(mode: str, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor):
    return flip_scale_log_probabilities(forward, images, SCALES if mode == "flip_scale" else (1.0,))


def detection_tta(mode: str, forward: Callable[[list[torch.Tensor]], list[dict]], images: list[torch.Tensor]):
    return flip_detections(forward, images, MERGE_IOU, getattr(forward, "detections_per_img", None))


def flip_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    return (forward(images) + forward(images.flip(-1))) / 2


def flip_translate_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, shift: int
) -> torch.Tensor:
    """Half the flip logits of ``images``, half the mean flip logits of ``images`` shifted ``shift`` pixels up-left
    and down-right, the uncovered border filled by reflection."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (shift,) * 4, mode="reflect")
    up_left = padded[..., :height, :width]
    down_right = padded[..., 2 * shift :, 2 * shift :]
    shifted = (flip_logits(forward, up_left) + flip_logits(forward, down_right)) / 2
    return (flip_logits(forward, images) + shifted) / 2


def scaled_size(size: int, scale: float) -> int:
    """``size`` x ``scale``, rounded to a multiple of SIZE_MULTIPLE (at least one); scale 1 keeps ``size``."""
    if scale == 1.0:
        return size
    return max(SIZE_MULTIPLE, round(size * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def flip_scale_log_probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales: Sequence[float]
) -> torch.Tensor:
    """log of the mean softmax probabilities of ``images`` and their mirror images at each scale, resized back."""
    height, width = images.shape[-2:]
    total = torch.zeros((), device=images.device)
    for scale in scales:
        size = (scaled_size(height, scale), scaled_size(width, scale))
        resized = size != (height, width)
        scaled = F.interpolate(images, size=size, mode="bilinear", antialias=scale < 1) if resized else images
        for mirror in (False, True):
            probabilities = forward(scaled.flip(-1) if mirror else scaled).float().softmax(dim=1)
            probabilities = probabilities.flip(-1) if mirror else probabilities
            if resized:
                probabilities = F.interpolate(probabilities, size=(height, width), mode="bilinear")
            total = total + probabilities
    # clamped: a class no view gives any probability would be -inf, which the cross-entropy cannot take
    return (total / (2 * len(scales))).clamp_min(torch.finfo(torch.float32).tiny).log()


def mirrored_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """``(x0, y0, x1, y1)`` boxes of an image ``width`` wide, mirrored left-right (its own inverse)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([width - x1, y0, width - x0, y1], dim=-1)


def flip_detections(
    detect: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]],
    images: list[torch.Tensor],
    iou_threshold: float = MERGE_IOU,
    limit: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The detections of each image and of its mirror image (mapped back), merged: class-wise NMS over the union at
    ``iou_threshold``, the ``limit`` highest scores kept (the detector's own ``detections_per_img``)."""
    plain = detect(images)
    mirror = detect([image.flip(-1) for image in images])
    merged = []
    for image, first, second in zip(images, plain, mirror):
        second = {**second, "boxes": mirrored_boxes(second["boxes"], image.shape[-1])}
        if "masks" in second:
            second["masks"] = second["masks"].flip(-1)
        union = {key: torch.cat([first[key], second[key]]) for key in first}
        keep = batched_nms(union["boxes"], union["scores"], union["labels"], iou_threshold)  # by falling score
        merged.append({key: value[keep[:limit]] for key, value in union.items()})
    return merged
