"""What a detection test leaves for review, from the evaluation that gives the logged mAP (not a second one):
per-class AP and precision-recall curves read from COCO's precision array (torchmetrics' extended summary), and a
confusion matrix with a background row and column."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from torchmetrics import Metric
from torchvision.ops import box_iou

# COCO's evaluation grid: IoU thresholds 0.50:0.05:0.95 and 101 recall points (torchmetrics' defaults)
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
RECALL_POINTS = torch.linspace(0, 1, 101)


def precision_curves(precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, precision at each recall point: at IoU 0.5, and the mean over IoU 0.5:0.95, both ``(K, R)``.

    ``precision`` is COCO's ``(T, R, K, A, M)`` array; area "all" and the largest detection limit are read, as
    COCO's AP is. -1 marks a class without ground truth (kept, so its AP stays -1). Each curve's mean over the
    recall points is COCO's AP for that class (its 101-point area)."""
    curves = precision[:, :, :, 0, -1].double()  # (T, R, K)
    at_50 = curves[0].T
    mean = curves.mean(dim=0).T
    mean[(curves < 0).all(dim=0).T] = -1
    return at_50, mean


def class_average_precisions(precision: torch.Tensor) -> dict[str, torch.Tensor]:
    """``ap`` (IoU 0.5:0.95), ``ap50`` and ``ap75`` per class (-1: no ground truth), as COCO's summary computes
    them for a single class: the mean of the valid precision entries."""
    curves = precision[:, :, :, 0, -1].double()  # (T, R, K)
    valid = curves > -1

    def mean(values: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        count = mask.sum(dim=dims)
        out = (values.clamp(min=0) * mask).sum(dim=dims) / count.clamp(min=1)
        return torch.where(count > 0, out, torch.full_like(out, -1.0))

    index_75 = int(torch.argmin((IOU_THRESHOLDS - 0.75).abs()))
    return {
        "ap": mean(curves, valid, (0, 1)),
        "ap50": mean(curves[0], valid[0], (0,)),
        "ap75": mean(curves[index_75], valid[index_75], (0,)),
    }


def write_class_table(
    path: Path, class_names: Sequence[str], category_ids: Sequence[int] | None, classes: Sequence[int], rows: dict
) -> None:
    """``per_class_ap.csv``: one row per class the evaluation saw (label order), AP columns per IoU type; -1 where
    the test split has no instance of the class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "category_id", *columns])
        for k, label in enumerate(classes):
            name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
            category = category_ids[label - 1] if category_ids and 0 < label <= len(category_ids) else label
            writer.writerow([name, category, *(f"{float(rows[c][k]):.6f}" for c in columns)])


class DetectionConfusionMatrix(Metric):
    """Counts of (true class, predicted class) over matched boxes, with a background row and column.

    Our own because torchmetrics has no detection confusion matrix. Per image, detections scoring at least
    ``score_threshold`` are matched to ground-truth boxes regardless of class, greedily by IoU (each box used once,
    IoU >= ``iou_threshold``): a match counts at (true, predicted); an unmatched ground-truth box is a miss
    (true, background); an unmatched detection a false alarm (background, predicted). Crowd regions are not
    counted. Labels are 1..K (0 is the detector's background); row and column K is background.
    """

    full_state_update = False

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, score_threshold: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        size = num_classes + 1
        self.add_state("confusion", default=torch.zeros(size, size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        background = self.num_classes
        for pred, target in zip(preds, targets):
            keep = pred["scores"] >= self.score_threshold
            pred_boxes, pred_labels = pred["boxes"][keep], pred["labels"][keep].long() - 1
            crowd = target.get("iscrowd")
            solid = crowd == 0 if crowd is not None else torch.ones_like(target["labels"], dtype=torch.bool)
            true_boxes, true_labels = target["boxes"][solid], target["labels"][solid].long() - 1
            true_matched = torch.zeros(len(true_boxes), dtype=torch.bool)
            pred_matched = torch.zeros(len(pred_boxes), dtype=torch.bool)
            if len(true_boxes) and len(pred_boxes):
                iou = box_iou(true_boxes, pred_boxes).cpu()
                pairs = (iou >= self.iou_threshold).nonzero()
                order = iou[pairs[:, 0], pairs[:, 1]].argsort(descending=True)
                for t, p in pairs[order].tolist():
                    if not true_matched[t] and not pred_matched[p]:
                        true_matched[t] = pred_matched[p] = True
                        self.confusion[true_labels[t], pred_labels[p]] += 1
            for t in (~true_matched).nonzero().flatten().tolist():
                self.confusion[true_labels[t], background] += 1
            for p in (~pred_matched).nonzero().flatten().tolist():
                self.confusion[background, pred_labels[p]] += 1

    def compute(self) -> torch.Tensor:
        return self.confusion
