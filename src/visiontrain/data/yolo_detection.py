"""Bring-your-own detection data in the YOLO (Ultralytics) format, found in either of two ways:

- ``data.yaml=<file>``: an Ultralytics data.yaml read as Ultralytics reads it. ``path`` is the dataset root
  (relative: to the yaml's folder; absent: that folder); ``train``, ``val`` and optional ``test`` are each a folder
  of images (searched recursively), a .txt file listing image paths (one per line, relative to the list's folder),
  or a list of either, relative to ``path`` (a ``../`` path that does not exist there is tried inside ``path``, as
  Ultralytics does for Roboflow's exports). Each image's label file is at the same path with its last ``images``
  folder replaced by ``labels`` and the suffix by ``.txt``. ``names`` is a list or ``{id: name}``.
- ``data.root=<folder>``: the folder holds ``images/{train,val,test}/`` and ``labels/{train,val,test}/`` (sub-folders
  mirrored) and ``data.yaml`` for the names; or, without ``images/train``, a data.yaml whose keys say where the splits
  are (the Roboflow export: ``train/images``, ``valid/images``, ``test/images``).

``test`` is optional (none: no test stage).

Each line of a label file is one object, its coordinates fractions (0..1) of the image's width and height:
- ``class cx cy w h``: a box by its centre, width and height;
- ``class x1 y1 x2 y2 x3 y3 ...``: a polygon (instance segmentation); its box is the polygon's extent, and it is
  the object's instance mask when masks are read (``data.masks``).
``class`` indexes data.yaml's names; here it is label ``class + 1``, and ``category_ids`` keeps the YOLO index
(predictions.json reports it).

What happens to imperfect labels, as with COCO files (see coco_detection):
- an image without a label file (or with an empty one) is a background image: kept, with no objects;
- a box reaching past the image's edge (e.g. ``cx - w/2 < 0``) is clipped to the image, one warning per split
  counting them and naming the first;
- a box or polygon with no width or height is dropped, one warning per split counting them.
Anything else is an error naming the file and line: a line that is not 5 numbers or a class and x y pairs, a
class outside ``0..K-1``, a coordinate outside 0..1 (the box lies outside the image, or the file holds pixels), a
label file without its image (in the images/labels layout), an image that does not decode, a box line when
instance masks are needed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from visiontrain.data.base import SUFFIX_FORMATS, read_rgb, undecodable
from visiontrain.data.coco_detection import decode_segmentation
from visiontrain.data.detection_dataset import DetectionDataModule, DetectionSource, Target, pooled_splits
from visiontrain.data.splits import checked_folds
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

ROW_FORMATS = "'class cx cy w h' (a box) or 'class x1 y1 x2 y2 x3 y3 ...' (a polygon)"


def read_data_yaml(data_yaml: Path) -> dict[str, Any]:
    if not data_yaml.is_file():
        raise UserError(
            f"{data_yaml} does not exist: data.root must be a YOLO dataset folder holding images/, labels/ and "
            "data.yaml (its names: the class names), or give data.yaml=<file>."
        )
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{data_yaml} is not valid YAML ({' '.join(str(err).split())}).") from err
    return data if isinstance(data, dict) else {}


def read_names(data_yaml: Path) -> tuple[str, ...]:
    """The class names of data.yaml, index ``0..K-1`` as the label files count them."""
    data = read_data_yaml(data_yaml)
    names = data.get("names")
    if isinstance(names, dict):
        # Ultralytics' {id: name} form: the ids must be the class indices 0..K-1, as the label files use them
        try:
            by_id = {int(key): str(value) for key, value in names.items()}
        except (TypeError, ValueError) as err:
            raise UserError(f"{data_yaml}: names has a key that is not a class index ({err}).") from err
        if sorted(by_id) != list(range(len(by_id))):
            raise UserError(
                f"{data_yaml}: names has ids {sorted(by_id)}; YOLO class ids must be 0..{len(by_id) - 1}, one each."
            )
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        raise UserError(f"{data_yaml} has no names: give the class names as a list or as {{id: name}}.")
    count = data.get("nc")
    if count is not None and count != len(names):
        raise UserError(f"{data_yaml} says nc: {count} but lists {len(names)} names.")
    return tuple(str(name) for name in names)


def label_path(image: Path) -> Path:
    """Ultralytics' pairing: the image's path with its last ``images`` folder as ``labels`` and the suffix ``.txt``."""
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        return image.with_suffix(".txt")  # beside the image, as Ultralytics falls back to
    last = len(parts) - 2 - parts[-2::-1].index("images")
    parts[last] = "labels"
    return Path(*parts).with_suffix(".txt")


def split_images(data_yaml: Path, data: dict[str, Any], split: str) -> list[Path] | None:
    """The images data.yaml (read as ``data``) names for ``split`` (None: it names none), resolved as Ultralytics
    resolves them."""
    entries = data.get(split)
    if entries is None:
        return None
    root = Path(data.get("path") or ".")
    root = root if root.is_absolute() else (data_yaml.parent / root)
    images: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        where = root / str(entry)
        if not where.exists() and str(entry).startswith("../"):  # Roboflow writes ../train/images
            where = root / str(entry)[3:]
        if where.is_dir():
            images += sorted(p for p in where.rglob("*") if p.suffix.lower() in SUFFIX_FORMATS and p.is_file())
        elif where.is_file():
            lines = [row.strip() for row in where.read_text(encoding="utf-8").splitlines() if row.strip()]
            images += [Path(row) if Path(row).is_absolute() else (where.parent / row) for row in lines]
        else:
            raise UserError(f"{data_yaml}: {split}: {entry} is neither a folder of images nor a list of them.")
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise UserError(f"{data_yaml}: {split}: {len(missing)} listed image(s) do not exist, e.g. {missing[0]}.")
    if not images:
        raise UserError(f"{data_yaml}: {split}: {entries} holds no images ({', '.join(sorted(SUFFIX_FORMATS))}).")
    return [p.resolve() for p in images]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as err:
        raise undecodable(path, err) from err


def polygon_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The shoelace formula: the area COCO evaluation sorts objects by (small/medium/large)."""
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2


def read_label_file(
    path: Path, width: int, height: int, names: Sequence[str], names_file: Path
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The objects of one label file in pixels, and the lines whose box was clipped or dropped (for the warnings)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read label file {path} ({err}).") from err
    objects, clipped, degenerate = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path} line {number}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise UserError(f"{where} is {line.strip()!r}, not numbers; YOLO lines are {ROW_FORMATS}.") from None
        polygon = len(values) > 5
        if not (len(values) == 5 or (polygon and len(values) % 2 == 1)):
            raise UserError(f"{where} has {len(values)} numbers ({line.strip()!r}); YOLO lines are {ROW_FORMATS}.")
        if not values[0].is_integer() or not 0 <= values[0] < len(names):
            raise UserError(f"{where} has class {fields[0]}, but {names_file} names classes 0..{len(names) - 1} only.")
        coords = values[1:]
        outside = [v for v in coords if not 0 <= v <= 1]
        if outside:
            raise UserError(
                f"{where} has coordinate {outside[0]:g}, outside 0..1: YOLO coordinates are fractions of the image's "
                "width and height, so this object lies outside the image (or the file holds pixels)."
            )
        if polygon:
            xs, ys = [x * width for x in coords[0::2]], [y * height for y in coords[1::2]]
            box = [min(xs), min(ys), max(xs), max(ys)]  # the polygon's extent, as Ultralytics takes it
            area = polygon_area(xs, ys)
            outline = [v for point in zip(xs, ys) for v in point]
        else:
            cx, cy, w, h = coords
            full = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            # centre and size lie in 0..1, so only the low edges can fall below 0 and only the high ones past the image
            box = [max(full[0], 0.0), max(full[1], 0.0), min(full[2], width), min(full[3], height)]
            if box != full and w > 0 and h > 0:
                clipped.append(where)
            area = (box[2] - box[0]) * (box[3] - box[1])
            outline = None
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            degenerate.append(where)
            continue
        objects.append({"box": box, "label": int(values[0]) + 1, "area": area, "polygon": outline, "where": where})
    return objects, clipped, degenerate


class YoloSource(DetectionSource):
    """The images of the given splits with their label files parsed and checked. One source for all splits, so that
    k-fold can pool train and val; ``split_indices`` says which images are whose."""

    def __init__(
        self, root: Path, splits: Sequence[str], names: Sequence[str], listing: tuple[Path, dict] | None = None
    ) -> None:
        self.root = root
        # listing: data.yaml and its content, when the splits are where it says, not images/<split>/
        self.listing = listing
        self.names_file = listing[0] if listing else root / "data.yaml"
        self.name = f"the YOLO-format data {listing[0] if listing else root}"
        self.image_paths: list[Path] = []
        self.label_paths: list[Path | None] = []  # None: no label file (a background image)
        self.image_sizes = []
        self.annotations: list[list[dict[str, Any]]] = []
        self.split_indices: dict[str, list[int]] = {}
        for split in splits:
            start = len(self.image_paths)
            self._read_split(split, names)
            self.split_indices[split] = list(range(start, len(self.image_paths)))
        # lines without a polygon: no instance mask can come from them
        self.box_lines = [a["where"] for anns in self.annotations for a in anns if a["polygon"] is None]

    def _read_split(self, split: str, names: Sequence[str]) -> None:
        if self.listing:
            images = split_images(*self.listing, split) or []
            label_files = [label_path(p) for p in images]
            images_dir = labels_dir = Path(f"{self.names_file}: {split}")  # for messages
        else:
            images, label_files, images_dir, labels_dir = self._folder_split(split)
        clipped, degenerate, background = [], [], 0
        for image, label_file in zip(images, label_files):
            width, height = image_size(image)
            objects: list[dict[str, Any]] = []
            if label_file.is_file():
                objects, clipped_here, degenerate_here = read_label_file(
                    label_file, width, height, names, self.names_file
                )
                clipped += clipped_here
                degenerate += degenerate_here
            else:
                background += 1
            self.image_paths.append(image)
            self.label_paths.append(label_file if label_file.is_file() else None)
            self.image_sizes.append((width, height))
            self.annotations.append(objects)
        if clipped:
            log.warning(
                "%d box(es) in %s reach outside their image (first: %s); clipped to the image.",
                len(clipped),
                labels_dir,
                clipped[0],
            )
        if degenerate:
            log.warning(
                "%d box(es) in %s have no width or height inside their image (first: %s); dropped.",
                len(degenerate),
                labels_dir,
                degenerate[0],
            )
        if background:
            # kept as background images (as Ultralytics does); all of them without labels is a layout slip
            report = log.warning if background == len(images) else log.info
            report(
                "%d of %d images in %s have no label file in %s: background images, kept without objects.",
                background,
                len(images),
                images_dir,
                labels_dir,
            )

    def _folder_split(self, split: str) -> tuple[list[Path], list[Path], Path, Path]:
        """``root/images/<split>/`` and its mirror ``root/labels/<split>/``."""
        images_dir, labels_dir = self.root / "images" / split, self.root / "labels" / split
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise UserError(
                    f"{folder} does not exist: a YOLO dataset has images/{split}/ and labels/{split}/ (one .txt per "
                    f"image) under data.root, or a data.yaml naming its splits (data.yaml=<file>)."
                )
        images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in SUFFIX_FORMATS and p.is_file())
        if not images:
            raise UserError(f"{images_dir} holds no images ({', '.join(sorted(SUFFIX_FORMATS))}).")
        label_files = [labels_dir / p.relative_to(images_dir).with_suffix(".txt") for p in images]
        # a label file nobody reads is a mistake to show, not to skip (a renamed or missing image);
        # classes.txt is what LabelImg writes beside its label files
        paired = set(label_files)
        orphans = sorted(p for p in labels_dir.rglob("*.txt") if p not in paired and p.name != "classes.txt")
        if orphans:
            raise UserError(
                f"{len(orphans)} label file(s) in {labels_dir} have no image of the same name in {images_dir}, "
                f"e.g. {orphans[0]}."
            )
        return images, label_files, images_dir, labels_dir

    def label_files(self, indices: Sequence[int]) -> list[Path]:
        """data.yaml (what the class indices mean) and the label files of the images that have one."""
        return [self.names_file, *(self.label_paths[i] for i in indices if self.label_paths[i] is not None)]

    def load(self, index: int, with_masks: bool) -> tuple[torch.Tensor, Target]:
        image = read_rgb(self.image_paths[index])
        width, height = self.image_sizes[index]
        anns = self.annotations[index]
        target: Target = {
            "boxes": torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            "image_id": torch.tensor(index),
        }
        if with_masks:
            masks = []
            for a in anns:
                if a["polygon"] is None:
                    raise UserError(f"{a['where']} is a box, but the model needs instance masks (polygon lines).")
                masks.append(decode_segmentation([a["polygon"]], height, width))
            target["masks"] = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        return image, target


class YoloDetectionDataModule(DetectionDataModule):
    """``root`` holding ``images/``, ``labels/`` and ``data.yaml``; train and val (with ``folds``: k-fold over both),
    test when ``images/test`` exists."""

    def __init__(
        self,
        root: str | None = None,
        num_classes: int | None = None,
        folds: int | None = None,
        fold: int = 0,
        split_seed: int = 12345,
        yaml: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        if not root and not yaml:
            raise UserError(
                "data=yolo_detection needs data.root=<dataset folder> or data.yaml=<Ultralytics data.yaml>."
            )
        self.root = Path(root) if root else Path(yaml).parent
        # the splits where data.yaml says: given, or a folder without images/train (Roboflow's export)
        given = Path(yaml) if yaml else None
        folder_yaml = self.root / "data.yaml"
        self.data_yaml = given or (folder_yaml if not (self.root / "images" / "train").is_dir() else None)
        self.name = f"the YOLO-format data {self.data_yaml or self.root}"
        self.folds, self.fold = checked_folds(folds, fold)
        self.split_seed = split_seed

    @functools.cached_property
    def listing(self) -> tuple[Path, dict[str, Any]] | None:
        """data.yaml and its content, read once, when the splits are where it says."""
        return (self.data_yaml, read_data_yaml(self.data_yaml)) if self.data_yaml is not None else None

    @property
    def has_test_split(self) -> bool:
        if self.listing is not None:
            return self.listing[1].get("test") is not None
        return (self.root / "images" / "test").is_dir()

    def object_classes(self) -> tuple[str, ...]:
        names = read_names(self.data_yaml or self.root / "data.yaml")
        self.category_ids = tuple(range(len(names)))  # the YOLO class index of labels 1..K
        return names

    def make_splits(self) -> dict[str, tuple[DetectionSource, list[int]]]:
        splits = ["train", "val", "test"] if self.has_test_split else ["train", "val"]
        source = YoloSource(self.root, splits, self.read_class_names(), self.listing)
        if self.with_masks and source.box_lines:
            raise UserError(
                f"{len(source.box_lines)} line(s) of {self.root / 'labels'} are boxes (first: {source.box_lines[0]}), "
                "but the model needs instance masks: give every object as a polygon line, or set data.masks=false "
                "with a box-only model."
            )
        pool_name = f"{self.root / 'images'}/train and /val"
        return pooled_splits(source, source.split_indices, self.folds, self.fold, self.split_seed, pool_name)
