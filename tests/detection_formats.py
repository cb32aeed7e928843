"""Writers for small detection datasets in their REAL on-disk formats: COCO JSON + image folder, and the
PennFudanPed folder layout. The pictures are learnable: each class is a shape of its own colour
(red rectangles, blue ellipses, ...) on dark noise, with known boxes and instance masks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# sparse, as COCO's are: labels 1..3 must map back to these
CATEGORIES = ({"id": 3, "name": "rectangle"}, {"id": 17, "name": "ellipse"}, {"id": 90, "name": "triangle"})
COLOURS = {3: (230, 40, 40), 17: (40, 80, 240), 90: (40, 220, 60)}


def shape_polygon(category_id: int, x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """The outline of one shape inside the box (x0, y0)-(x1, y1) as a flat COCO polygon."""
    if category_id == 3:
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif category_id == 17:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        points = [
            (cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ]
    else:
        points = [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    return [round(v, 2) for point in points for v in point]


def shapes_image(rng: np.random.Generator, width: int, height: int, n_objects: int, category_ids=None):
    """An image and its annotations: non-overlapping shapes, each box taken from its drawn mask."""
    pixels = rng.integers(0, 70, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    annotations = []
    taken = np.zeros((height, width), bool)
    category_ids = category_ids or [c["id"] for c in CATEGORIES]
    for _ in range(50):  # place up to n_objects shapes without overlap
        if len(annotations) == n_objects:
            break
        w, h = rng.integers(width // 4, width // 2), rng.integers(height // 4, height // 2)
        x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
        if taken[y0 : y0 + h, x0 : x0 + w].any():
            continue
        taken[max(0, y0 - 2) : y0 + h + 2, max(0, x0 - 2) : x0 + w + 2] = True
        category_id = int(rng.choice(category_ids))
        polygon = shape_polygon(category_id, float(x0), float(y0), float(x0 + w - 1), float(y0 + h - 1))
        mask = Image.new("L", (width, height))
        ImageDraw.Draw(mask).polygon(polygon, fill=1)
        ImageDraw.Draw(image).polygon(polygon, fill=COLOURS[category_id])
        ys, xs = np.nonzero(np.array(mask))
        bx, by = int(xs.min()), int(ys.min())
        bw, bh = int(xs.max()) + 1 - bx, int(ys.max()) + 1 - by
        annotations.append(
            {
                "category_id": category_id,
                "bbox": [bx, by, bw, bh],
                "area": int(len(xs)),
                "segmentation": [polygon],
                "iscrowd": 0,
            }
        )
    return image, annotations


def write_coco(
    images_dir: Path,
    annotation_file: Path,
    n_images: int,
    seed: int,
    sizes=((128, 96), (96, 128)),
    max_objects: int = 2,
    category_ids=None,
) -> dict:
    """``images_dir/<n>.png`` and a COCO annotation file for them; returns the JSON written."""
    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [dict(c) for c in CATEGORIES]}
    for n in range(n_images):
        width, height = sizes[n % len(sizes)]
        image, annotations = shapes_image(rng, width, height, int(rng.integers(1, max_objects + 1)), category_ids)
        image_id = 1000 + 7 * n  # ids need not be contiguous either
        name = f"{n:04d}.png"
        image.save(images_dir / name)
        data["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for ann in annotations:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id, **ann})
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(data))
    return data


def write_coco_splits(root: Path, n_train: int = 12, n_val: int = 6, n_test: int = 6) -> Path:
    """``root/{train,val,test}/`` images and ``root/annotations/instances_{split}.json``."""
    for seed, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        write_coco(root / split, root / "annotations" / f"instances_{split}.json", n, seed=100 + seed)
    return root


def write_pennfudan(root: Path, n_images: int = 12, seed: int = 7) -> Path:
    """``root/PennFudanPed/{PNGImages,PedMasks,Annotation}`` as the official zip unpacks: masks hold 0 for
    background and 1..n for the pedestrians (here: upright coloured bars)."""
    rng = np.random.default_rng(seed)
    base = root / "PennFudanPed"
    for folder in ("PNGImages", "PedMasks", "Annotation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for n in range(1, n_images + 1):
        name = f"FudanPed{n:05d}"
        width, height = (int(rng.integers(90, 130)), int(rng.integers(80, 110)))
        pixels = rng.integers(0, 70, size=(height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        boxes = []
        for instance in range(1, int(rng.integers(1, 3)) + 1):
            w, h = int(rng.integers(12, 20)), int(rng.integers(40, 60))
            x0 = 10 + (instance - 1) * (width // 2) + int(rng.integers(0, 10))
            y0 = int(rng.integers(0, height - h))
            mask[y0 : y0 + h, x0 : x0 + w] = instance
            pixels[y0 : y0 + h, x0 : x0 + w] = (200, 180, 60)
            boxes.append((x0, y0, x0 + w - 1, y0 + h - 1))
        Image.fromarray(pixels).save(base / "PNGImages" / f"{name}.png")
        Image.fromarray(mask).save(base / "PedMasks" / f"{name}_mask.png")
        names = " ".join(['"PASpersonWalking"'] * len(boxes))
        lines = [
            "# Compatible with PASCAL Annotation Version 1.00",
            f'Image filename : "PennFudanPed/PNGImages/{name}.png"',
            f"Image size (X x Y x C) : {width} x {height} x 3",
            f"Objects with ground truth : {len(boxes)} {{ {names} }}",
        ]
        for k, (x0, y0, x1, y1) in enumerate(boxes, start=1):
            lines.append(
                f'Bounding box for object {k} "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : '
                f"({x0 + 1}, {y0 + 1}) - ({x1 + 1}, {y1 + 1})"
            )
        (base / "Annotation" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return base


# --- YOLO (Ultralytics) and Pascal VOC XML layouts ----------------------------------------------------------------
# a sample is (file name, image, objects): the image a PIL image to save or a path to copy; each object a dict with
# "class" (0-based, CATEGORIES order), "name", "box" (XYXY pixel edges), optional "polygon" (flat pixel x y list)
# and optional "difficult" (VOC). YOLO: objects None = no label file (a background image).
CLASS_NAMES = tuple(c["name"] for c in CATEGORIES)


def save_image(image, path: Path) -> None:
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, (str, Path)):
        shutil.copyfile(image, path)
    else:
        image.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else image.save(path)


def image_size(image) -> tuple[int, int]:
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.size
    return image.size


def yolo_line(obj: dict, width: int, height: int) -> str:
    """``class cx cy w h``, or ``class x1 y1 x2 y2 ...`` when the object has a polygon; fractions of the image."""
    if obj.get("polygon"):
        scaled = [v / (width if n % 2 == 0 else height) for n, v in enumerate(obj["polygon"])]
        return " ".join([str(obj["class"]), *(f"{v:.6f}" for v in scaled)])
    x0, y0, x1, y1 = obj["box"]
    values = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
    return " ".join([str(obj["class"]), *(f"{v:.6f}" for v in values)])


def write_yolo_yaml(root: Path, names=CLASS_NAMES, as_dict: bool = False) -> Path:
    """``root/data.yaml`` as Ultralytics writes it (``path``/``train``/``val`` keys included; they are not read)."""
    lines = [f"path: {root}", "train: images/train", "val: images/val", "test: images/test", "names:"]
    lines += [f"  {i}: {name}" for i, name in enumerate(names)] if as_dict else [f"  - {name}" for name in names]
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    return root / "data.yaml"


def write_yolo_split(root: Path, split: str, samples) -> None:
    """``root/images/<split>/<name>`` and ``root/labels/<split>/<stem>.txt``."""
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for name, image, objects in samples:
        save_image(image, root / "images" / split / name)
        if objects is not None:
            width, height = image_size(image)
            text = "".join(yolo_line(obj, width, height) + "\n" for obj in objects)
            (root / "labels" / split / f"{Path(name).stem}.txt").write_text(text)


def voc_xml(filename: str, width: int, height: int, objects) -> str:
    """A VOC annotation: bndbox counts pixels from 1 and includes the last one, so edges (x0, y0, x1, y1) are written
    as (x0 + 1, y0 + 1, x1, y1)."""
    parts = [
        "<annotation>",
        "  <folder>VOC2007</folder>",
        f"  <filename>{filename}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        parts += [
            "  <object>",
            f"    <name>{obj['name']}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{int(obj.get('difficult', False))}</difficult>",
            "    <bndbox>",
            f"      <xmin>{x0 + 1:g}</xmin><ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax>",
            "    </bndbox>",
            "  </object>",
        ]
    return "\n".join([*parts, "</annotation>"]) + "\n"


def write_voc_split(root: Path, split: str, samples) -> None:
    """``root/JPEGImages/<name>``, ``root/Annotations/<stem>.xml``; the ids in ``root/ImageSets/Main/<split>.txt``."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, image, objects in samples:
        save_image(image, root / "JPEGImages" / name)
        width, height = image_size(image)
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(voc_xml(name, width, height, objects or []))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{Path(n).stem}\n" for n, _, _ in samples))


def shapes_samples(n_images: int, seed: int, suffix: str, prefix: str = "", sizes=((128, 96), (96, 128))):
    """Shape pictures as samples (see ``shapes_image``); each object's box is the tight box of its drawn pixels."""
    rng = np.random.default_rng(seed)
    class_of = {c["id"]: n for n, c in enumerate(CATEGORIES)}
    samples = []
    for n in range(n_images):
        width, height = sizes[n % len(sizes)]
        image, annotations = shapes_image(rng, width, height, int(rng.integers(1, 3)))
        objects = []
        for ann in annotations:
            x, y, w, h = ann["bbox"]
            cls = class_of[ann["category_id"]]
            objects.append({"class": cls, "name": CLASS_NAMES[cls], "box": [x, y, x + w, y + h],
                            "polygon": ann["segmentation"][0]})  # fmt: skip
        samples.append((f"{prefix}{n:04d}{suffix}", image, objects))
    return samples


def write_yolo_shapes(root: Path, counts=(8, 4, 4), polygons: bool = False, as_dict: bool = False) -> dict:
    """A YOLO dataset of shape pictures, box lines (or polygon lines); the first training image has no label file.
    Returns ``{split: samples}`` as written."""
    written = {}
    for seed, (split, n) in enumerate(zip(("train", "val", "test"), counts)):
        samples = shapes_samples(n, 200 + seed, ".png", prefix=f"{split}_")
        if not polygons:
            samples = [(name, image, [{k: v for k, v in o.items() if k != "polygon"} for o in objs])
                       for name, image, objs in samples]  # fmt: skip
        if split == "train":
            samples[0] = (samples[0][0], samples[0][1], None)  # a background image
        write_yolo_split(root, split, samples)
        written[split] = samples
    write_yolo_yaml(root, as_dict=as_dict)
    return written


def write_voc_shapes(root: Path, counts=(8, 4, 4), difficult_every: int = 0) -> dict:
    """A VOCdevkit/VOC2007-style folder of shape pictures (JPEG; ids unique across splits); with ``difficult_every``
    = k, every k-th object is marked difficult. Returns ``{split: samples}`` as written."""
    written, seen = {}, 0
    for seed, (split, n) in enumerate(zip(("train", "val", "test"), counts)):
        samples = shapes_samples(n, 300 + seed, ".jpg", prefix=f"{split}_")
        for _, _, objects in samples:
            for obj in objects:
                seen += 1
                obj["difficult"] = bool(difficult_every) and seen % difficult_every == 0
        write_voc_split(root, split, samples)
        written[split] = samples
    return written
