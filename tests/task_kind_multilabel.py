"""A task kind visiontrain does not ship, written outside the package as a user would: multi-label classification
(each image holds any number of the classes). Importing this module registers it (visiontrain.kinds); the
configs in tests/test_task_kinds.py choose its datamodule and task by ``_target_``.

On disk: ``<root>/classes.txt`` (one name per line) and per split ``<root>/<split>/labels.csv`` (``file,labels``,
the labels space-separated) beside the split's images.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from matplotlib import pyplot as plt
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import MaxMetric
from torchmetrics.classification import MultilabelF1Score
from torchvision.io import ImageReadMode, decode_image

from visiontrain import kinds
from visiontrain.data import preprocessing
from visiontrain.data.base import SplitDataModule
from visiontrain.serving.base import LoadedModel, TaskServing
from visiontrain.tasks.base import VisionTask

KIND = kinds.register(
    kinds.TaskKind(
        name="multilabel",
        serving=f"{__name__}:MultilabelServing",
        label_statistics=f"{__name__}:label_statistics",
        sample_grid=f"{__name__}:sample_grid",
        statistics_figures=f"{__name__}:statistics_figures",
    )
)


class MultilabelImages(Dataset):
    def __init__(self, folder: Path, class_names: tuple[str, ...], transform) -> None:
        with (folder / "labels.csv").open() as f:
            rows = list(csv.DictReader(f))
        self.samples = [(folder / row["file"], [class_names.index(n) for n in row["labels"].split()]) for row in rows]
        self.num_classes = len(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, labels = self.samples[index]
        target = torch.zeros(self.num_classes)
        target[labels] = 1.0
        return self.transform(decode_image(str(path), mode=ImageReadMode.RGB)), target


class MultilabelFolders(SplitDataModule):
    name = "multi-label folders"
    task = "multilabel"

    def __init__(self, root: str, image_size: int = 32, batch_size: int = 16, eval_batch_size: int = 64,
                 num_workers: int = 0, pin_memory: bool = False, **unused: Any) -> None:  # fmt: skip
        super().__init__()
        self.root = Path(root)
        self.class_names = tuple((self.root / "classes.txt").read_text().split())
        self.num_classes = len(self.class_names)
        self.input_shape = (3, image_size, image_size)
        self.preprocessing = preprocessing.exact(3, image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def setup(self, stage: str | None = None) -> None:
        transform = preprocessing.transform(self.preprocessing)
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_set", MultilabelImages(self.root / split, self.class_names, transform))


class MultilabelTask(VisionTask):
    """Binary cross-entropy per class; F1 over classes at threshold 0.5 (``val/f1``, the monitored metric)."""

    task = "multilabel"

    def __init__(self, net: nn.Module, optimizer, scheduler, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, optimizer, scheduler, num_classes, **kwargs)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.criterion = nn.BCEWithLogitsLoss()
        self.val_f1, self.test_f1 = MultilabelF1Score(num_classes), MultilabelF1Score(num_classes)
        self.val_f1_best = MaxMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_memory_format(images))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss = self.criterion(self(images), targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def evaluate(self, batch, stage: str, f1: MultilabelF1Score) -> None:
        images, targets = batch
        logits = self(images)
        self.log(f"{stage}/loss", self.criterion(logits, targets), on_step=False, on_epoch=True)
        f1.update(logits.sigmoid(), targets.int())

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val", self.val_f1)

    def on_validation_epoch_end(self) -> None:
        value = self.val_f1.compute()
        self.val_f1.reset()
        self.val_f1_best.update(value)
        self.log_dict({"val/f1": value, "val/f1_best": self.val_f1_best.compute()})

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "test", self.test_f1)

    def on_test_epoch_end(self) -> None:
        self.log("test/f1", self.test_f1.compute())
        self.test_f1.reset()


class MultilabelServing(TaskServing):
    task = "multilabel"

    def writer(self, output: Path, model: LoadedModel, options: DictConfig) -> MultilabelWriter:
        return MultilabelWriter(output, model.class_names)


class MultilabelWriter:
    """``predictions.csv``: per image the classes whose probability is at least 0.5, and every probability."""

    def __init__(self, output: Path, class_names: list[str]) -> None:
        self.names = class_names
        self.file = (output / "predictions.csv").open("w", newline="")
        self.csv = csv.writer(self.file)
        self.csv.writerow(["file", "labels", *self.names])

    def add(self, path: Path, image: torch.Tensor, logits: torch.Tensor) -> None:
        probabilities = logits.sigmoid().tolist()
        labels = " ".join(name for name, p in zip(self.names, probabilities) if p >= 0.5)
        self.csv.writerow([str(path), labels, *(f"{p:.4f}" for p in probabilities)])

    def close(self) -> None:
        self.file.close()


def label_statistics(dataset: MultilabelImages, datamodule: Any, max_masks: int | None) -> dict[str, Any]:
    counts = [0] * dataset.num_classes
    for _, labels in dataset.samples:
        for label in labels:
            counts[label] += 1
    return {"images": len(dataset), "images_per_class": counts}


def sample_grid(images: list[torch.Tensor], targets: list[Any], datamodule: Any, title: str) -> plt.Figure:
    figure, axes = plt.subplots(1, len(images), figsize=(2 * len(images), 2.4), squeeze=False)
    for axis, image, target in zip(axes[0], images, targets):
        axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axis.set_title(" ".join(n for n, t in zip(datamodule.spec.class_names, target.tolist()) if t), fontsize=8)
        axis.axis("off")
    figure.suptitle(title, fontsize=8)
    return figure


def statistics_figures(data: str, names: list[str], splits: dict[str, Any]) -> list[tuple[str, Any]]:
    figure, axis = plt.subplots(figsize=(4, 3))
    for split, values in splits.items():
        axis.plot(names, values["images_per_class"], marker="o", label=split)
    axis.set_title(f"{data}: images holding each class")
    axis.legend()
    return [("images_per_class", figure)]
