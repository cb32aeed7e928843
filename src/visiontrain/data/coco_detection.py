"""Bring-your-own detection data in COCO format: an images folder and an annotation JSON file per split.

The JSON is COCO's: ``images`` (``id``, ``file_name`` relative to the images folder, ``width``,
``height``), ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` = ``[x, y, w, h]`` in
pixels, optional ``iscrowd``, ``area`` and ``segmentation`` as polygons or RLE) and ``categories``
(``id``, ``name``). Category ids may be sparse (COCO's run 1..90 with gaps): they are sorted and
mapped to contiguous labels ``1..K`` (``category_ids[label - 1]`` maps back, see :func:`to_coco_results`).

What happens to imperfect annotations, so that training never crashes on them:
- a box reaching outside its image is clipped to the image, with one warning per annotation file
  (how many, and the first annotation id);
- a box with no width or height (also after clipping) is dropped, with one warning per file;
- crowd annotations (``iscrowd: 1``) are left out of training targets and kept, flagged, for
  evaluation (COCO evaluation then ignores detections on them);
- images without annotations are kept (they teach the detector what background looks like).
Anything that cannot be read is an error naming the file: JSON that does not parse or lacks
``images``/``annotations``/``categories``, an image listed but missing, an annotation pointing at an
unknown image or category, a malformed ``bbox``, an image whose size differs from the JSON's.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from visiontrain.data.detection_dataset import DetectionDataModule, DetectionSource, Target, read_rgb, target_of
from visiontrain.data.splits import checked_folds
from visiontrain.errors import UserError

log = logging.getLogger(__name__)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"annotation file {path} is not valid JSON ({err}).") from err
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data, dict) or key not in data]
    if missing:
        raise UserError(f"annotation file {path} is not COCO format: it has no {', '.join(repr(k) for k in missing)}.")
    return data


def decode_segmentation(segmentation: Any, height: int, width: int) -> torch.Tensor:
    """COCO polygons, uncompressed or compressed RLE -> uint8 ``(H, W)`` mask."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):  # polygons: one or more [x1, y1, x2, y2, ...]
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return torch.from_numpy(coco_mask.decode(rle)).to(torch.uint8)


class CocoSource(DetectionSource):
    """One split: its annotation file parsed, checked and turned into per-image tensors."""

    def __init__(self, images_dir: str | Path, annotation_file: str | Path, category_ids: Sequence[int] | None = None):
        self.images_dir, self.annotation_file = Path(images_dir), Path(annotation_file)
        self.name = str(self.annotation_file)
        data = _load_json(self.annotation_file)
        file = self.annotation_file
        try:
            categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            images = [(int(i["id"]), str(i["file_name"]), int(i["width"]), int(i["height"])) for i in data["images"]]
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"annotation file {file}: an image or category entry lacks {err} (COCO needs "
                "id/file_name/width/height and id/name)."
            ) from err
        if not categories:
            raise UserError(f"annotation file {file} defines no categories.")
        self.category_ids = tuple(sorted(categories)) if category_ids is None else tuple(category_ids)
        self.category_names = tuple(categories.get(i, "") for i in self.category_ids)
        if set(categories) != set(self.category_ids):
            raise UserError(
                f"annotation file {file} has category ids {sorted(categories)}, but the training "
                f"annotations have {list(self.category_ids)}; every split must use the same categories."
            )
        label_of = {cat: label for label, cat in enumerate(self.category_ids, start=1)}

        if not self.images_dir.is_dir():
            raise UserError(f"images folder {self.images_dir} (for {file}) does not exist.")
        self.image_ids = [i[0] for i in images]
        self.image_paths = [self.images_dir / i[1] for i in images]
        self.image_sizes = [(i[2], i[3]) for i in images]
        missing = [p for p in self.image_paths if not p.is_file()]
        if missing:
            raise UserError(f"{len(missing)} image(s) listed in {file} are missing, e.g. {missing[0]}.")
        position = {image_id: n for n, image_id in enumerate(self.image_ids)}

        per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        clipped, degenerate = [], []
        for ann in data["annotations"]:
            ann_id = ann.get("id", "?")
            if ann.get("image_id") not in position:
                raise UserError(
                    f"annotation {ann_id} in {file} refers to image_id {ann.get('image_id')}, "
                    "which is not in its images list."
                )
            if ann.get("category_id") not in label_of:
                raise UserError(
                    f"annotation {ann_id} in {file} has category_id {ann.get('category_id')}, "
                    f"which is not among its categories {list(self.category_ids)}."
                )
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise UserError(f"annotation {ann_id} in {file} has bbox {bbox!r}; COCO needs [x, y, width, height].")
            n = position[ann["image_id"]]
            width, height = self.image_sizes[n]
            x, y, w, h = (float(v) for v in bbox)
            box = [x, y, x + w, y + h]
            inside = [
                min(max(box[0], 0.0), width),
                min(max(box[1], 0.0), height),
                min(max(box[2], 0.0), width),
                min(max(box[3], 0.0), height),
            ]
            if inside != box and w > 0 and h > 0:
                clipped.append(ann_id)
            if inside[2] - inside[0] <= 0 or inside[3] - inside[1] <= 0:
                degenerate.append(ann_id)
                continue
            per_image[n].append(
                {
                    "box": inside,
                    "label": label_of[ann["category_id"]],
                    "iscrowd": int(bool(ann.get("iscrowd", 0))),
                    "area": float(ann.get("area", w * h)),
                    "segmentation": ann.get("segmentation"),
                    "id": ann_id,
                }
            )
        if clipped:
            log.warning(
                "%d box(es) in %s reach outside their image (first: annotation %s); clipped to the image.",
                len(clipped),
                file,
                clipped[0],
            )
        if degenerate:
            log.warning(
                "%d box(es) in %s have no width or height inside their image (first: annotation %s); dropped.",
                len(degenerate),
                file,
                degenerate[0],
            )
        self.annotations = [per_image[n] for n in range(len(images))]

    def label_files(self, indices: Sequence[int]) -> list[Path]:
        return [self.annotation_file]

    def load(self, index: int, with_masks: bool) -> tuple[torch.Tensor, Target]:
        path = self.image_paths[index]
        image = read_rgb(path)
        width, height = self.image_sizes[index]
        if tuple(image.shape[-2:]) != (height, width):
            raise UserError(
                f"image {path} is {image.shape[2]}x{image.shape[1]} but {self.annotation_file} says "
                f"{width}x{height} (width x height)."
            )
        anns = self.annotations[index]
        target = target_of(anns, self.image_ids[index])
        if with_masks:
            masks = []
            for a in anns:
                if not a["segmentation"]:
                    raise UserError(
                        f"annotation {a['id']} in {self.annotation_file} has no segmentation, "
                        "but the model needs instance masks."
                    )
                masks.append(decode_segmentation(a["segmentation"], height, width))
            target["masks"] = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        return image, target


def to_coco_results(
    predictions: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Predictions (XYXY boxes, labels ``1..K``, scores) -> COCO results entries with the original category ids."""
    results = []
    for pred, image_id in zip(predictions, image_ids):
        for box, label, score in zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist()):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label - 1]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


class CocoDetectionDataModule(DetectionDataModule):
    """``train``/``val`` (and optional ``test``) each ``{images: <folder>, annotations: <file.json>}``."""

    def __init__(
        self,
        train: Mapping[str, str],
        val: Mapping[str, str],
        num_classes: int | None = None,
        test: Mapping[str, str | None] | None = None,
        folds: int | None = None,
        fold: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        # k-fold folds one training pool; here train and val are two annotation files with their own image ids
        if folds is not None:
            raise UserError(
                f"data.folds={folds}: COCO-format data is not folded, its train and val are separate annotation "
                "files; set data.folds=null and give each fold's files as data.train and data.val."
            )
        checked_folds(folds, fold)
        self.splits = {"train": train, "val": val}
        if test and test.get("annotations"):
            self.splits["test"] = test
        for split, paths in self.splits.items():
            for key in ("images", "annotations"):
                if not paths or not paths.get(key):
                    raise UserError(
                        f"data.{split}.{key} is not set: give the {split} split's images folder and "
                        "COCO annotation file."
                    )
        self.name = f"the COCO-format data {train['annotations']}"
        self._train_source: CocoSource | None = None

    @property
    def has_test_split(self) -> bool:
        return "test" in self.splits

    def object_classes(self) -> tuple[str, ...]:
        """The training annotations' categories, sorted by id (read once)."""
        if self._train_source is None:
            self._train_source = CocoSource(self.splits["train"]["images"], self.splits["train"]["annotations"])
            self.category_ids = self._train_source.category_ids
        return self._train_source.category_names

    def make_splits(self) -> dict[str, tuple[DetectionSource, list[int]]]:
        self.object_classes()
        sources: dict[str, tuple[DetectionSource, list[int]]] = {}
        for split, paths in self.splits.items():
            reused = split == "train"  # read by object_classes
            source = (
                self._train_source if reused else CocoSource(paths["images"], paths["annotations"], self.category_ids)
            )
            sources[split] = (source, list(range(len(source))))
        return sources
