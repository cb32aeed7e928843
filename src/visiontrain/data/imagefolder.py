"""Bring-your-own classification data: ``root/{train,val,test}/<class>/<image>``.

``val/`` is optional (then a seeded fraction of ``train/`` is held out); ``test/`` is optional
(then the run has no test stage). With ``folds`` (k-fold cross-validation) ``train/`` and ``val/`` together
are the pool that is folded; ``test/`` is never folded. Images are decoded per sample by DataLoader workers and
augmented with ``torchvision.transforms.v2``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from visiontrain.data.augmentation import image_classification_transforms
from visiontrain.data.base import IMAGENET_MEAN, IMAGENET_STD, SplitDataModule, load_rgb
from visiontrain.data.manifest import SplitContent
from visiontrain.data.samplers import checked_sampler
from visiontrain.data.splits import check_every_class_present, checked_folds, fold_split
from visiontrain.errors import UserError

log = logging.getLogger(__name__)


def dataset_labels(dataset: Dataset) -> list[int]:
    """The class of every sample, from the datasets' ``(path, label)`` lists (no image decoded): ImageFolder and
    LabelledImages, also inside Subset and ConcatDataset."""
    if isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [label for part in dataset.datasets for label in dataset_labels(part)]
    return [label for _, label in dataset.samples]


def labelled_files(dataset: Dataset) -> list[tuple[Path, int]]:
    """``(file, class)`` of each sample, from the same lists as ``dataset_labels``."""
    if isinstance(dataset, Subset):
        inner = labelled_files(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [sample for part in dataset.datasets for sample in labelled_files(part)]
    return [(Path(path), int(label)) for path, label in dataset.samples]


class RGBClassificationDataModule(SplitDataModule):
    """Decoded-per-sample RGB classification data: the options, transforms and input shape that
    ``ImageFolderDataModule`` and ``OxfordPetBreedsDataModule`` share; subclasses read the class names
    (``num_classes`` None: as many as they find) and build the splits."""

    task = "classification"

    def __init__(
        self,
        num_classes: int | None = None,
        image_size: int = 224,
        num_channels: int = 3,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 12345,
        folds: int | None = None,
        fold: int = 0,
        num_workers: int = 2,
        pin_memory: bool = False,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        hflip: bool = True,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        augment: str = "none",
        augment_options: Mapping[str, Mapping[str, Any]] | None = None,
        random_erasing: float = 0.0,
        sampler: str | None = None,
    ) -> None:
        super().__init__()
        self.sampler = checked_sampler(sampler, self.task)
        if num_channels != 3:
            raise UserError(f"data.num_channels={num_channels}: these images are read as RGB, set it to 3.")
        self.num_classes = num_classes
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.folds, self.fold = checked_folds(folds, fold)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.num_channels = 3
        self.train_transform, self.eval_transform, self.preprocessing = image_classification_transforms(
            image_size, mean, std, hflip, crop_scale, augment, augment_options, random_erasing
        )
        self.class_names: tuple[str, ...] = ()
        self.train_set = self.val_set = self.test_set = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def class_counts(self) -> list[int] | None:
        return None if self.train_set is None else self.per_class(self.train_set)

    def per_class(self, dataset: Dataset) -> list[int]:
        labels = torch.as_tensor(dataset_labels(dataset), dtype=torch.long)
        return torch.bincount(labels, minlength=len(self.class_names)).tolist()

    def check_classes(self, name: str) -> None:
        """The set-up check every classification source shares (see ``check_every_class_present``)."""
        splits = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        counts = {split: self.per_class(dataset) for split, dataset in splits.items() if dataset is not None}
        check_every_class_present(name, self.class_names, counts)

    def split_contents(self) -> dict[str, SplitContent]:
        contents = {}
        for split, dataset in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            if dataset is not None:
                samples = labelled_files(dataset)
                labels = [self.class_names[label] for _, label in samples]
                contents[split] = SplitContent(files=[path for path, _ in samples], labels=labels)
        return contents

    def train_labels(self) -> list[int]:
        return dataset_labels(self.train_set)

    def held_out(self, labels: Sequence[int], pool: str) -> tuple[list[int], list[int]]:
        """``(train, val)`` indices into a training pool of images of classes ``labels`` (``pool`` names it): fold
        ``fold`` of the stratified ``folds``, else a seeded ``val_fraction`` of it."""
        if self.folds is not None:
            return fold_split(labels, self.folds, self.fold, self.split_seed, pool, self.class_names)
        n = len(labels)
        n_val = max(1, round(self.val_fraction * n))
        if n_val >= n:
            raise UserError(f"data.val_fraction={self.val_fraction} leaves no training images out of {n}.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        return order[n_val:], order[:n_val]


class ImageFolderDataModule(RGBClassificationDataModule):
    """The classes are the folders of ``root/train``, sorted by name (torchvision's ``ImageFolder``)."""

    def __init__(self, root: str, num_classes: int | None = None, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.root = Path(root)
        self.name = f"the image folder {root}"

    @property
    def has_test_split(self) -> bool:
        return (self.root / "test").is_dir()

    def read_class_names(self) -> tuple[str, ...]:
        if not self.class_names:
            train = self.root / "train"
            if not train.is_dir():
                raise UserError(f"image folder {train} does not exist (expected {self.root}/train/<class>/<image>).")
            try:
                names = find_classes(str(train))[0]
            except FileNotFoundError as err:
                raise UserError(f"{train}: {err}") from err
            self.class_names = self.agreeing(names, f"{train} has {len(names)} class folders")
        return self.class_names

    def _folder(self, split: str, transform) -> ImageFolder:
        path = self.root / split
        if not path.is_dir():
            raise UserError(f"image folder {path} does not exist (expected {self.root}/{split}/<class>/<image>).")
        try:
            dataset = ImageFolder(str(path), transform=transform, loader=load_rgb)
        except FileNotFoundError as err:
            raise UserError(f"{path}: {err}") from err
        if tuple(dataset.classes) != self.class_names:
            raise UserError(
                f"{path} has classes {dataset.classes}, but {self.root}/train has {list(self.class_names)}."
            )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.read_class_names()
        has_val = (self.root / "val").is_dir()
        if has_val and self.folds is None:
            self.train_set = self._folder("train", self.train_transform)
            self.val_set = self._folder("val", self.eval_transform)
        else:
            # the pool: train/, and with folds val/ too: cross-validation validates on every labelled image that is
            # not a test image, so a val/ folder is folded with train/ rather than left out
            parts = ["train", "val"] if has_val else ["train"]
            pool = " and ".join(str(self.root / part) for part in parts)
            train_view = ConcatDataset([self._folder(part, self.train_transform) for part in parts])
            eval_view = ConcatDataset([self._folder(part, self.eval_transform) for part in parts])
            labels = [label for folder in train_view.datasets for label in folder.targets]
            train_idx, val_idx = self.held_out(labels, pool)
            self.train_set, self.val_set = Subset(train_view, train_idx), Subset(eval_view, val_idx)
            if self.folds is None:
                log.info(
                    "no %s/val: holding out %d of %d training images (seed %d)",
                    self.root,
                    len(val_idx),
                    len(labels),
                    self.split_seed,
                )
        if self.has_test_split:
            self.test_set = self._folder("test", self.eval_transform)
        self.check_classes(str(self.root))
