"""Penn-Fudan pedestrians in the official folder layout: ``root/PNGImages/<name>.png`` and
``root/PedMasks/<name>_mask.png`` (``root/Annotation/`` is not needed: boxes come from the masks).

Each mask PNG holds 0 for background and ``1..n`` for the n pedestrians of its image; every
instance id becomes one instance mask and its box (the tightest box around its pixels, in the
pixel-edge convention: a one-pixel object is 1x1). One class, ``pedestrian`` (label 1). The 170
images are split train/val/test by a fixed seeded permutation (``split_seed``, ``val_size``, ``test_size``); with
``folds`` the images after the same ``test_size`` test images are folded (k-fold) into train and val.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import masks_to_boxes

from visiontrain.data.detection_dataset import DetectionDataModule, DetectionSource, Target, read_rgb
from visiontrain.data.splits import checked_folds, fold_split
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

CLASS_NAMES = ("pedestrian",)


def instances_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W)`` instance-id mask -> uint8 instance masks ``(N, H, W)`` and XYXY boxes ``(N, 4)``."""
    ids = mask.unique()
    ids = ids[ids != 0]
    masks = (mask[None] == ids[:, None, None]).to(torch.uint8)
    boxes = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # last pixel's far edge
    return masks, boxes


class PennFudanSource(DetectionSource):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"PennFudanPed at {root}"
        images_dir, masks_dir = root / "PNGImages", root / "PedMasks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise UserError(
                    f"{folder} does not exist: data.root must be the PennFudanPed folder holding PNGImages/ and "
                    "PedMasks/ (https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip, unzipped)."
                )
        self.image_paths = sorted(images_dir.glob("*.png"))
        if not self.image_paths:
            raise UserError(f"{images_dir} holds no .png images.")
        self.mask_paths = [masks_dir / f"{p.stem}_mask.png" for p in self.image_paths]
        missing = [p for p in self.mask_paths if not p.is_file()]
        if missing:
            raise UserError(f"{len(missing)} image(s) in {images_dir} have no mask, e.g. {missing[0]} is missing.")
        self.image_sizes = []
        for path in self.image_paths:
            try:
                with Image.open(path) as image:  # reads the header only
                    self.image_sizes.append(image.size)
            except Exception as err:
                raise UserError(f"cannot read image {path} ({type(err).__name__}: {err}).") from err

    def image_classes(self, index: int) -> set[int]:
        return {1}  # every image shows pedestrians, the one class: no need to read its mask

    def label_files(self, indices: Sequence[int]) -> list[Path]:
        return [self.mask_paths[i] for i in indices]

    def load(self, index: int, with_masks: bool) -> tuple[torch.Tensor, Target]:
        image = read_rgb(self.image_paths[index])
        path = self.mask_paths[index]
        try:
            mask = decode_image(str(path), mode=ImageReadMode.GRAY)[0]
        except Exception as err:
            raise UserError(f"cannot read mask {path} ({type(err).__name__}: {err}).") from err
        if mask.shape != image.shape[-2:]:
            raise UserError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[2]}x{image.shape[1]} (width x height)."
            )
        masks, boxes = instances_from_mask(mask)
        target: Target = {
            "boxes": boxes,
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
            "area": masks.flatten(1).sum(1).float(),
            "image_id": torch.tensor(index),
        }
        if with_masks:
            target["masks"] = masks
        return image, target


class PennFudanDataModule(DetectionDataModule):
    def __init__(
        self,
        root: str,
        num_classes: int = 1,
        val_size: int = 20,
        test_size: int = 50,
        split_seed: int = 12345,
        folds: int | None = None,
        fold: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.root = Path(root)
        self.name = "PennFudanPed"
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed
        self.folds, self.fold = checked_folds(folds, fold)

    def object_classes(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def make_splits(self) -> dict[str, tuple[DetectionSource, list[int]]]:
        source = PennFudanSource(self.root)
        n = len(source)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        if self.folds is not None:  # the same test images as without folds; data.val_size is not used
            if not 1 <= self.test_size < n:
                raise UserError(
                    f"data.test_size={self.test_size} must be at least 1 and leave images to fold: "
                    f"{self.root} has {n} images."
                )
            test, pool = order[: self.test_size], order[self.test_size :]
            pool_name = f"{self.root} outside the test split"
            train_idx, val_idx = fold_split(len(pool), self.folds, self.fold, self.split_seed, pool_name)
            train, val = [pool[i] for i in train_idx], [pool[i] for i in val_idx]
            return {"train": (source, train), "val": (source, val), "test": (source, test)}
        if self.val_size < 1 or self.test_size < 1 or self.val_size + self.test_size >= n:
            raise UserError(
                f"data.val_size={self.val_size} and data.test_size={self.test_size} must each be at least 1 and "
                f"leave training images: {self.root} has {n} images."
            )
        test, val = order[: self.test_size], order[self.test_size : self.test_size + self.val_size]
        train = order[self.test_size + self.val_size :]
        return {"train": (source, train), "val": (source, val), "test": (source, test)}
