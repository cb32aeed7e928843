"""Bring-your-own detection data in the Pascal VOC layout (a ``VOCdevkit/VOC2007``-style folder):
``Annotations/<id>.xml``, ``JPEGImages/`` and ``ImageSets/Main/{train,val,test}.txt`` (one image id per line;
``test.txt`` is optional: without it, no test stage).

Each XML file holds the image's ``filename`` (in JPEGImages/; ``<id>.jpg`` when absent), its ``size`` (width,
height; read from the image's header when absent) and one ``object`` per instance: ``name``, ``difficult`` (0/1) and
``bndbox`` with ``xmin ymin xmax ymax`` as VOC counts pixels, from 1 and including the last one, so the box's edges
are ``(xmin - 1, ymin - 1, xmax, ymax)`` here (PennFudan's annotation files count the same way).
The classes are ``data.class_names``, or else the sorted set of object names in the training split's annotations
(then every other split's objects must be among them).

Difficult objects are handled as VOC's evaluation does: they count neither as found nor as missed, and they are
not trained on (see ``VocSource``). Pascal VOC has boxes only, so no instance masks.

What happens to imperfect annotations, as with COCO files (see coco_detection): a box reaching past the image's
edge is clipped to the image, with one warning counting them and naming the first; nothing is dropped. Anything
else is an error naming the file: XML that does not parse, an object without a name or with a malformed
``bndbox``, a box lying outside the image or with ``xmax < xmin``, an object whose class is not among the classes,
an id listed in ImageSets without its annotation file or image, an image whose size differs from its ``size``.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visiontrain.data.base import read_rgb
from visiontrain.data.detection_dataset import DetectionDataModule, DetectionSource, Target, pooled_splits, target_of
from visiontrain.data.splits import checked_folds
from visiontrain.data.yolo_detection import image_size
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

LAYOUT = "a VOCdevkit/VOC2007-style folder with Annotations/, JPEGImages/ and ImageSets/Main/{train,val}.txt"


@dataclass
class VocObject:
    name: str
    bndbox: tuple[float, float, float, float]  # xmin ymin xmax ymax as written (1-based, last pixel included)
    difficult: bool
    number: int  # its place in the file, from 1, for messages


@dataclass
class VocAnnotation:
    path: Path
    filename: str | None
    size: tuple[int, int] | None  # (width, height)
    objects: list[VocObject] = field(default_factory=list)


def read_ids(path: Path) -> list[str]:
    """The image ids of an ImageSets list, the first field of each line."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: data.root must be {LAYOUT}.")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise UserError(f"{path} lists no image ids.")
    return ids


def read_annotation(path: Path, listed_in: Path) -> VocAnnotation:
    """One VOC XML file, checked field by field."""
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist (its id is listed in {listed_in}).")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise UserError(f"annotation file {path} is not valid XML ({err}).") from err
    size = None
    try:
        width, height = (int(float(root.findtext(f"size/{key}", "0"))) for key in ("width", "height"))
    except ValueError as err:
        raise UserError(f"annotation file {path} has a size that is not a number ({err}).") from err
    if width > 0 and height > 0:  # some tools write 0 0; the image's header says it then
        size = (width, height)
    annotation = VocAnnotation(path, (root.findtext("filename") or "").strip() or None, size)
    for number, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise UserError(f"object {number} in {path} has no name.")
        box = obj.find("bndbox")
        values = [box.findtext(key) if box is not None else None for key in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in values)
        except (TypeError, ValueError):
            raise UserError(
                f"object {number} ({name}) in {path} has bndbox {values}; VOC needs numbers xmin, ymin, xmax, ymax."
            ) from None
        if xmax < xmin or ymax < ymin:
            raise UserError(
                f"object {number} ({name}) in {path} has bndbox {xmin:g} {ymin:g} {xmax:g} {ymax:g} "
                "(xmin ymin xmax ymax): its far corner lies before its near one."
            )
        difficult = (obj.findtext("difficult") or "0").strip().lower() in ("1", "true")
        annotation.objects.append(VocObject(name, (xmin, ymin, xmax, ymax), difficult, number))
    return annotation


class VocSource(DetectionSource):
    """The images of the given annotations, their boxes in pixel edges and checked against the image.

    Difficult objects become crowd regions (``iscrowd`` 1): that is the sample format's ignore mechanism, and it does
    what VOC does with them. Training samples leave crowd regions out (DetectionDataset), so a difficult object is
    never a target to learn; COCO evaluation ignores them (detections on them count neither as true nor as false
    positives, and they are not among the objects to find), as VOC's evaluation ignores difficult objects. One
    difference: COCO matches a detection to a crowd region by the share of the detection inside it rather than IoU,
    so a detection lying within a difficult box is ignored at any size.
    """

    def __init__(
        self,
        root: Path,
        annotations: Sequence[VocAnnotation],
        ids: Sequence[str],
        class_names: Sequence[str],
        classes_from: str = "data.class_names",
    ) -> None:
        self.root = root
        self.name = f"the VOC-format data {root}"
        label_of = {name: label for label, name in enumerate(class_names, start=1)}
        self.annotation_files = [a.path for a in annotations]
        self.image_paths: list[Path] = []
        self.image_sizes = []
        self.annotations: list[list[dict]] = []
        clipped = []
        for annotation, image_id in zip(annotations, ids):
            image = self._image_path(annotation, image_id)
            width, height = annotation.size or image_size(image)
            objects = []
            for obj in annotation.objects:
                where = f"object {obj.number} ({obj.name}) in {annotation.path}"
                if obj.name not in label_of:
                    raise UserError(
                        f"object {obj.number} in {annotation.path} is a {obj.name!r}, which is not among the classes "
                        f"{list(class_names)} ({classes_from}); set data.class_names to every class of the data."
                    )
                xmin, ymin, xmax, ymax = obj.bndbox
                box = [xmin - 1, ymin - 1, xmax, ymax]  # 1-based, last pixel included -> pixel edges
                inside = [max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)]
                if inside[2] <= inside[0] or inside[3] <= inside[1]:
                    raise UserError(
                        f"{where} has bndbox {xmin:g} {ymin:g} {xmax:g} {ymax:g}, outside its {width}x{height} image."
                    )
                if inside != box:
                    clipped.append(where)
                objects.append(
                    {
                        "box": inside,
                        "label": label_of[obj.name],
                        # difficult -> crowd region: out of training targets, ignored by evaluation (see above)
                        "iscrowd": int(obj.difficult),
                        "area": (inside[2] - inside[0]) * (inside[3] - inside[1]),
                    }
                )
            self.image_paths.append(image)
            self.image_sizes.append((width, height))
            self.annotations.append(objects)
        if clipped:
            log.warning(
                "%d box(es) in %s reach outside their image (first: %s); clipped to the image.",
                len(clipped),
                root / "Annotations",
                clipped[0],
            )

    def _image_path(self, annotation: VocAnnotation, image_id: str) -> Path:
        """JPEGImages/<filename of the XML>, else JPEGImages/<id>.jpg (as VOC names them)."""
        images_dir = self.root / "JPEGImages"
        candidates = [images_dir / annotation.filename] if annotation.filename else []
        candidates.append(images_dir / f"{image_id}.jpg")
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise UserError(f"the image of {annotation.path} is missing: {candidates[0]} does not exist.")

    def label_files(self, indices: Sequence[int]) -> list[Path]:
        return [self.annotation_files[i] for i in indices]

    def load(self, index: int, with_masks: bool) -> tuple[torch.Tensor, Target]:
        path = self.image_paths[index]
        image = read_rgb(path)
        width, height = self.image_sizes[index]
        if tuple(image.shape[-2:]) != (height, width):
            raise UserError(
                f"image {path} is {image.shape[2]}x{image.shape[1]} but {self.annotation_files[index]} says "
                f"{width}x{height} (width x height)."
            )
        anns = self.annotations[index]
        target = target_of(anns, index)
        return image, target


class VocDetectionDataModule(DetectionDataModule):
    """``root`` a VOC2007-style folder; ``ImageSets/Main/train.txt`` and ``val.txt`` (with ``folds``: k-fold over
    both), and ``test.txt`` when it exists."""

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        folds: int | None = None,
        fold: int = 0,
        split_seed: int = 12345,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        if self.with_masks:
            raise UserError(
                "Pascal VOC XML annotations hold boxes only, but the model needs instance masks (data.masks=true); "
                "use a box detector (e.g. model=fasterrcnn or model=retinanet)."
            )
        self.root = Path(root)
        self.name = f"the VOC-format data {self.root}"
        if class_names is not None and (not class_names or len(set(class_names)) != len(class_names)):
            raise UserError(f"data.class_names={list(class_names)} must name each class once.")
        self.given_names = tuple(str(name) for name in class_names) if class_names else None
        self.folds, self.fold = checked_folds(folds, fold)
        self.split_seed = split_seed
        self._annotations: dict[str, tuple[list[str], list[VocAnnotation]]] = {}

    @property
    def has_test_split(self) -> bool:
        return (self.root / "ImageSets" / "Main" / "test.txt").is_file()

    def split_annotations(self, split: str) -> tuple[list[str], list[VocAnnotation]]:
        """The ids of ``ImageSets/Main/<split>.txt`` and their annotations (read once)."""
        if split not in self._annotations:
            list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
            ids = read_ids(list_file)
            annotations = [read_annotation(self.root / "Annotations" / f"{i}.xml", list_file) for i in ids]
            self._annotations[split] = (ids, annotations)
        return self._annotations[split]

    def object_classes(self) -> tuple[str, ...]:
        if self.given_names:
            return self.given_names
        names = sorted({obj.name for a in self.split_annotations("train")[1] for obj in a.objects})
        if not names:
            raise UserError(
                f"the training annotations of {self.root} hold no objects, so they name no classes; "
                "set data.class_names."
            )
        return tuple(names)

    def make_splits(self) -> dict[str, tuple[DetectionSource, list[int]]]:
        splits = ["train", "val", "test"] if self.has_test_split else ["train", "val"]
        ids, annotations, positions = [], [], {}
        for split in splits:  # one source for all splits, so that k-fold can pool train and val
            split_ids, split_annotations = self.split_annotations(split)
            positions[split] = list(range(len(ids), len(ids) + len(split_ids)))
            ids += split_ids
            annotations += split_annotations
        classes_from = "data.class_names" if self.given_names else "the object names of the training annotations"
        source = VocSource(self.root, annotations, ids, self.read_class_names(), classes_from)
        pool_name = f"{self.root / 'ImageSets' / 'Main'}/train.txt and val.txt"
        return pooled_splits(source, positions, self.folds, self.fold, self.split_seed, pool_name)
