"""What every detection data source shares: the sample format, the collate, aspect-ratio batching and the
datamodule around them. A source (PennFudan folders, a COCO JSON file) only says how to read image ``i``.

A sample is ``(image, target)``: ``image`` float ``(3, H, W)`` in [0, 1]; ``target`` holds ``boxes``
(float ``(N, 4)``, XYXY pixels), ``labels`` (int64 ``(N,)``, ``1..K``), ``iscrowd`` and ``area`` (``(N,)``,
what COCO evaluation uses), ``image_id`` and, when masks are read, ``masks`` (uint8 ``(N, H, W)``).
Training samples carry no crowd regions (a crowd box is not one object to regress); evaluation
samples keep them flagged, so COCO evaluation ignores detections that fall on them.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from visiontrain.data import preprocessing
from visiontrain.data.base import SplitDataModule
from visiontrain.data.detection_transforms import detection_eval_transform, detection_train_transform
from visiontrain.data.manifest import SplitContent
from visiontrain.data.samplers import DEFAULT_REPEAT_THRESHOLD, checked_sampler, grouped_batches
from visiontrain.data.spec import DataSpec
from visiontrain.data.splits import folded_train_val
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

Target = dict[str, torch.Tensor]


def read_rgb(path: str | Path) -> torch.Tensor:
    """uint8 ``(3, H, W)``; a file that is missing or does not decode is named in one sentence."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except Exception as err:
        reason = "it does not exist" if not Path(path).is_file() else f"{type(err).__name__}: {err}"
        raise UserError(f"cannot read image {path} ({reason}).") from err


class DetectionSource:
    """The images and annotations of one split. Subclasses fill ``image_paths`` and ``image_sizes`` and implement
    ``load``."""

    name: str = ""
    image_paths: list[Path]  # the image file of each image (for the split manifest)
    # (width, height) per image, known without decoding: for aspect-ratio grouping
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def load(self, index: int, with_masks: bool) -> tuple[torch.Tensor, Target]:
        """uint8 image ``(3, H, W)`` and its target (see the module docstring), crowd regions included."""
        raise NotImplementedError

    def image_classes(self, index: int) -> set[int]:
        """The labels of the objects training sees in image ``index`` (crowd regions left out), for
        ``data.sampler=repeat_factor``. A source holding its annotations parsed (``annotations``: per image, dicts
        with ``label`` and ``iscrowd``) answers without reading the image; any other loads it."""
        annotations = getattr(self, "annotations", None)
        if annotations is not None:
            return {a["label"] for a in annotations[index] if not a.get("iscrowd")}
        target = self.load(index, with_masks=False)[1]
        return set(target["labels"][target["iscrowd"] == 0].tolist())

    def label_files(self, indices: Sequence[int]) -> list[Path]:
        """The files holding the annotations of images ``indices``, for the split manifest; [] when none is known."""
        return []


def target_of(annotations: Sequence[dict[str, Any]], image_id: int) -> Target:
    """A sample's target from a source's parsed annotations (each with ``box``, ``label``, ``iscrowd``, ``area``)."""
    return {
        "boxes": torch.tensor([a["box"] for a in annotations], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([a["label"] for a in annotations], dtype=torch.int64),
        "iscrowd": torch.tensor([a["iscrowd"] for a in annotations], dtype=torch.int64),
        "area": torch.tensor([a["area"] for a in annotations], dtype=torch.float32),
        "image_id": torch.tensor(image_id),
    }


def pooled_splits(
    source: DetectionSource, indices: dict[str, list[int]], folds: int | None, fold: int, seed: int, pool_name: str
) -> dict[str, tuple[DetectionSource, list[int]]]:
    """Train, val and (if listed) test of one ``source``; with ``folds``, train and val together are the pool that
    fold ``fold`` splits, and test stays as it is."""
    train, val = folded_train_val(indices["train"], indices["val"], folds, fold, seed, pool_name)
    splits = {"train": (source, train), "val": (source, val)}
    if "test" in indices:
        splits["test"] = (source, indices["test"])
    return splits


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Images differ in size, so a batch is a list of images and a list of targets (what torchvision detectors take)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class DetectionDataset(Dataset):
    def __init__(self, source: DetectionSource, indices: Sequence[int], transform, train: bool, with_masks: bool):
        self.source = source
        self.indices = list(indices)
        self.transform = transform
        self.train = train
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.indices)

    def aspect_ratios(self) -> list[float]:
        return [w / h for w, h in (self.source.image_sizes[i] for i in self.indices)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = self.source.load(self.indices[index], self.with_masks)
        if self.train and len(target["iscrowd"]) and bool(target["iscrowd"].any()):
            keep = target["iscrowd"] == 0
            per_instance = ("boxes", "labels", "iscrowd", "area", "masks")
            target = {k: (v[keep] if k in per_instance else v) for k, v in target.items()}
        height, width = image.shape[-2:]
        sample = dict(target)
        sample["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
        if "masks" in target:
            sample["masks"] = tv_tensors.Mask(target["masks"])
        return self.transform(tv_tensors.Image(image), sample)


class AspectRatioBatchSampler(BatchSampler):
    """Batches whose images are all landscape (w >= h) or all portrait, so little of a batch is padding.

    Takes its indices from ``sampler`` (random for training, replaced by a distributed sampler under
    DDP) and fills one batch per orientation; the leftovers are yielded at the end of the epoch.
    torch has no such sampler and torchvision keeps its grouped sampler in the reference scripts,
    not the library, hence this one.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_last: bool = False):
        super().__init__(sampler, batch_size, drop_last)
        self.group_ids = list(group_ids)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in grouped_batches(iter(self.sampler), self.group_ids, self.batch_size):
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        counts: dict[int, int] = defaultdict(int)
        # a plain random pass visits every index once: count without drawing a permutation (which would
        # consume random numbers); any other sampler (e.g. distributed) is walked
        whole = isinstance(self.sampler, RandomSampler) and not self.sampler.replacement
        for index in range(len(self.group_ids)) if whole and len(self.sampler) == len(self.group_ids) else self.sampler:
            counts[self.group_ids[index]] += 1
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(n / self.batch_size) for n in counts.values())


class DetectionDataModule(SplitDataModule):
    """Train/val/(test) detection splits from a subclass's ``make_splits``; loaders, augmentation and batching here.

    ``input_shape`` is None: images keep their own size (the detector resizes them).
    """

    name: str = ""
    task = "detection"
    num_channels = 3

    def __init__(
        self,
        num_classes: int | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 2,
        num_workers: int = 2,
        pin_memory: bool = False,
        masks: bool = False,
        hflip: bool = True,
        scale_jitter: Sequence[float] | None = (0.75, 1.25),
        photometric: bool = True,
        aspect_ratio_grouping: bool = True,
        sampler: str | None = None,
        repeat_threshold: float = DEFAULT_REPEAT_THRESHOLD,
    ) -> None:
        super().__init__()
        self.sampler = checked_sampler(sampler, self.task)
        self.repeat_threshold = repeat_threshold
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.with_masks = masks
        self.aspect_ratio_grouping = aspect_ratio_grouping
        if scale_jitter is not None and (len(scale_jitter) != 2 or not 0 < scale_jitter[0] <= scale_jitter[1]):
            raise UserError(
                f"data.scale_jitter={list(scale_jitter)} must be [low, high] with 0 < low <= high, or null."
            )
        self.train_transform = detection_train_transform(hflip, scale_jitter, photometric)
        self.eval_transform = detection_eval_transform()
        self.class_names: tuple[str, ...] = ()
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self.test_set: DetectionDataset | None = None

    input_shape = None
    # what predict.py feeds the detector: the image as it is (the model resizes and normalises)
    preprocessing = preprocessing.as_is()
    # the dataset's id of label 1..K, when it has its own (COCO's sparse ids)
    category_ids: tuple[int, ...] = ()

    @property
    def spec(self) -> DataSpec:
        spec = super().spec
        category_ids = self.category_ids or tuple(range(1, spec.num_classes + 1))
        return replace(spec, category_ids=category_ids, with_masks=self.with_masks)

    def read_class_names(self) -> tuple[str, ...]:
        if not self.class_names:
            names = self.object_classes()
            self.class_names = self.agreeing(names, f"{self.name} has {len(names)} object classes")
        return self.class_names

    # --- what a subclass provides -------------------------------------------------------------
    def object_classes(self) -> tuple[str, ...]:
        """The names of the object classes, labels ``1..K`` (may set ``category_ids``)."""
        raise NotImplementedError

    def make_splits(self) -> dict[str, tuple[DetectionSource, list[int]]]:
        """``{"train": (source, indices), "val": ..., ["test": ...]}``."""
        raise NotImplementedError

    # --- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.read_class_names()
        splits = self.make_splits()
        for split, (source, indices) in splits.items():
            train = split == "train"
            dataset = DetectionDataset(
                source, indices, self.train_transform if train else self.eval_transform, train, self.with_masks
            )
            setattr(self, f"{split}_set", dataset)
        log.info("%s: %s images", self.name, " / ".join(f"{len(s[1])} {split}" for split, s in splits.items()))

    def split_contents(self) -> dict[str, SplitContent]:
        contents = {}
        for split, dataset in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            if dataset is not None:
                files = [dataset.source.image_paths[i] for i in dataset.indices]
                contents[split] = SplitContent(files=files, label_files=dataset.source.label_files(dataset.indices))
        return contents

    def train_image_classes(self) -> list[set[int]]:
        return [self.train_set.source.image_classes(i) for i in self.train_set.indices]

    def _loader(self, dataset: DetectionDataset | None, batch_size: int, train: bool) -> DataLoader:
        common: dict[str, Any] = dict(
            collate_fn=collate_detection,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        drawn = self.epoch_sampler() if train else None
        grouped = train and self.aspect_ratio_grouping
        groups = [int(ratio >= 1.0) for ratio in dataset.aspect_ratios()] if grouped else None
        if drawn is not None:
            # the drawn epoch is batched by orientation through its order, not by a batch sampler: Lightning would
            # replace a batch sampler's sampler with its own shuffle under DDP (samplers.ShardedSampler)
            grouping = {"group_ids": groups, "batch_size": batch_size} if groups is not None else {}
            return DataLoader(dataset, batch_size=batch_size, sampler=self.sharded(drawn, **grouping), **common)
        if groups is not None:
            sampler = AspectRatioBatchSampler(RandomSampler(dataset), groups, batch_size)
            return DataLoader(dataset, batch_sampler=sampler, **common)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, **common)
