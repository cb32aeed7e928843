"""Label statistics of a datamodule's splits, counted from the labels alone (for ``debug=browse``,
visiontrain.runs.browse): the label lists of classification data and the annotations of detection data (no image
is decoded), the masks of segmentation data (read as stored, without augmentation; with ``max_masks`` an evenly
spaced subset of a larger split, and the count read is part of the result).

Every value is plain JSON (``<run dir>/plots/label_stats.json``); the figures are drawn from these same numbers, so
histograms are kept as fixed bin edges and counts rather than the values themselves.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from scipy.ndimage import find_objects
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from visiontrain import kinds
from visiontrain.data.detection_dataset import DetectionDataset, DetectionSource
from visiontrain.data.imagefolder import dataset_labels
from visiontrain.data.in_memory import TensorImageDataset
from visiontrain.data.pennfudan_detection import PennFudanSource
from visiontrain.data.segmentation import SegmentationFiles, read_index_mask
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# fixed bins, so the histograms of two datasets (or two runs) compare bin by bin: box sides from 1 to 8192 pixels in
# half-octave steps, width/height ratios from 1/16 to 16 in quarter-octave steps; values beyond fall in the end bins
SIDE_EDGES = 2.0 ** np.arange(0.0, 13.01, 0.5)
ASPECT_EDGES = 2.0 ** np.arange(-4.0, 4.01, 0.25)
# COCO's object sizes (the areas behind its AP_small / AP_medium / AP_large), here by box area
COCO_SMALL, COCO_MEDIUM = 32**2, 96**2


def label_stats(datamodule: Any, max_masks: int | None = None) -> dict[str, Any]:
    """``{"data", "task", "class_names", "splits": {split: {...}}}`` for the train, val and test splits the
    datamodule has (set up already). What each split holds depends on the task; see the ``*_split`` functions."""
    spec = datamodule.spec
    statistics = kinds.of(spec.task).part("label_statistics")
    splits: dict[str, Any] = {}
    for split in SPLITS:
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None:
            continue
        start = time.perf_counter()
        splits[split] = statistics(dataset, datamodule, max_masks)
        log.info("%s %s: labels counted in %.1f s", spec.name, split, time.perf_counter() - start)
    return {"data": spec.name, "task": spec.task, "class_names": list(spec.class_names), "splits": splits}


# --- classification -------------------------------------------------------------------------------
def classification_split(dataset: Dataset, num_classes: int) -> dict[str, Any]:
    """``images`` and ``images_per_class`` (in class order), from the dataset's label list."""
    labels = dataset.labels.tolist() if isinstance(dataset, TensorImageDataset) else dataset_labels(dataset)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return {"images": len(labels), "images_per_class": counts.tolist()}


# --- segmentation ---------------------------------------------------------------------------------
def evenly_spaced(total: int, cap: int | None) -> list[int]:
    """All of ``range(total)``, or ``cap`` indices spread evenly over it (first and last included)."""
    if cap is None or total <= cap:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, cap).round().astype(int).tolist()))


def segmentation_split(
    dataset: SegmentationFiles, num_classes: int, ignore_index: int, max_masks: int | None
) -> dict[str, Any]:
    """``images``, ``masks_read``, ``pixels_per_class``, ``ignored_pixels`` and ``images_with_class`` (how many of
    the masks read hold at least one pixel of each class), from the mask files as stored: before augmentation, at
    their own size, with the datamodule's mapping of stored values to classes."""
    if not isinstance(dataset, SegmentationFiles):
        raise UserError(f"debug=browse reads the masks of image/mask pair datasets, not a {type(dataset).__name__}.")
    chosen = evenly_spaced(len(dataset.pairs), max_masks)

    def count(index: int) -> tuple[np.ndarray, int]:
        classes = dataset.to_classes(read_index_mask(dataset.pairs[index][1]))
        labelled = classes[classes != ignore_index]
        # every value is a class or the ignore index: the datamodule checked each mask when it was set up
        return np.bincount(labelled, minlength=num_classes)[:num_classes], classes.size - labelled.size

    # decoding PNGs releases the GIL: threads read several masks at once
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        counted = list(pool.map(count, chosen))
    pixels = np.zeros(num_classes, dtype=np.int64)
    images_with = np.zeros(num_classes, dtype=np.int64)
    ignored = 0
    for per_class, unlabelled in counted:
        pixels += per_class
        images_with += per_class > 0
        ignored += unlabelled
    return {
        "images": len(dataset.pairs),
        "masks_read": len(chosen),
        "pixels_per_class": pixels.tolist(),
        "ignored_pixels": int(ignored),
        "images_with_class": images_with.tolist(),
    }


# --- detection ------------------------------------------------------------------------------------
def annotated_objects(source: DetectionSource, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """XYXY boxes, labels (1..K) and crowd flags of image ``index`` as annotated, before augmentation. A source
    holding its annotations parsed (COCO, VOC, YOLO: ``annotations``, per image dicts with ``box``, ``label`` and
    maybe ``iscrowd``) answers without reading a file; Penn-Fudan's boxes come from its instance masks (read without
    the image); any other source is loaded whole."""
    annotations = getattr(source, "annotations", None)
    if annotations is not None:
        objects = annotations[index]
        boxes = torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([o["label"] for o in objects], dtype=torch.int64)
        return boxes, labels, torch.tensor([int(o.get("iscrowd", 0)) for o in objects], dtype=torch.int64)
    if isinstance(source, PennFudanSource):
        path = source.mask_paths[index]
        try:
            mask = decode_image(str(path), mode=ImageReadMode.GRAY)[0].numpy()
        except Exception as err:
            raise UserError(f"cannot read mask {path} ({type(err).__name__}: {err}).") from err
        # the boxes of pennfudan.instances_from_mask (pixel edges: a one-pixel object is 1x1), found in one pass over
        # the mask rather than one per instance
        found = [(cols.start, rows.start, cols.stop, rows.stop) for rows, cols in filter(None, find_objects(mask))]
        boxes = torch.tensor(found, dtype=torch.float32).reshape(-1, 4)
        return boxes, torch.ones(len(boxes), dtype=torch.int64), torch.zeros(len(boxes), dtype=torch.int64)
    target = source.load(index, with_masks=False)[1]
    return target["boxes"], target["labels"], target["iscrowd"]


def histogram(values: Sequence[float], edges: np.ndarray) -> dict[str, Any]:
    """``edges``, ``counts`` (values beyond the edges counted in the end bins) and the ``median`` (None: no values)."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0]
    median = float(np.median(values)) if len(values) else None
    return {"edges": edges.tolist(), "counts": counts.tolist(), "median": median}


def detection_split(dataset: DetectionDataset, num_classes: int) -> dict[str, Any]:
    """``images``, ``instances_per_class`` and ``crowd_instances``; of the objects that are not crowd regions (the
    ones trained on): ``boxes_per_image`` (entry n: images with n boxes), histograms of ``box_width``,
    ``box_height`` (pixels, as annotated) and ``box_aspect_ratio`` (width / height), and ``box_area`` in COCO's
    small / medium / large."""
    per_class = np.zeros(num_classes + 1, dtype=np.int64)  # label 0 is the background, never annotated
    crowd, boxes_per_image, sides = 0, [], []
    for index in dataset.indices:
        boxes, labels, iscrowd = annotated_objects(dataset.source, index)
        objects = iscrowd == 0
        crowd += int((~objects).sum())
        per_class += np.bincount(labels[objects].numpy(), minlength=num_classes + 1)
        boxes_per_image.append(int(objects.sum()))
        sides.append((boxes[objects, 2:] - boxes[objects, :2]).numpy())
    width, height = np.concatenate(sides).T if sides else (np.zeros(0), np.zeros(0))
    area = width * height
    return {
        "images": len(dataset.indices),
        "instances_per_class": per_class[1:].tolist(),
        "crowd_instances": crowd,
        "boxes_per_image": np.bincount(np.asarray(boxes_per_image, dtype=np.int64), minlength=1).tolist(),
        "box_width": histogram(width, SIDE_EDGES),
        "box_height": histogram(height, SIDE_EDGES),
        "box_aspect_ratio": histogram(width / np.maximum(height, 1e-6), ASPECT_EDGES),
        "box_area": {
            "small": int((area < COCO_SMALL).sum()),
            "medium": int(((area >= COCO_SMALL) & (area < COCO_MEDIUM)).sum()),
            "large": int((area >= COCO_MEDIUM).sum()),
        },
    }


# --- each kind's entry (visiontrain.kinds): (dataset, datamodule, max_masks) -> the split's statistics ----------
def classification_statistics(dataset: Dataset, datamodule: Any, max_masks: int | None) -> dict[str, Any]:
    return classification_split(dataset, datamodule.spec.num_classes)


def segmentation_statistics(dataset: Dataset, datamodule: Any, max_masks: int | None) -> dict[str, Any]:
    return segmentation_split(dataset, datamodule.spec.num_classes, datamodule.ignore_index, max_masks)


def detection_statistics(dataset: Dataset, datamodule: Any, max_masks: int | None) -> dict[str, Any]:
    return detection_split(dataset, datamodule.spec.num_classes)
