"""Drawings of detections: ground truth and predictions over an image, letterboxed for a grid."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

Target = dict[str, torch.Tensor]


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
