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
