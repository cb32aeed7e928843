"""Base for small datasets that fit in memory as decoded uint8 tensors (MNIST, CIFAR-10).

Images are decoded once, kept as one ``(N, C, H, W)`` uint8 tensor, fetched a whole batch per
indexing operation, and augmented/normalised as a batch on the training device after transfer.
No per-sample PIL decoding, no per-sample Python transform: this is where the speed comes from
(the same idea as airbench), and a GPU-resident pipeline fits in without redesign.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from visiontrain import preprocessing
from visiontrain.data.base import SplitDataModule
from visiontrain.data.batch_transforms import BatchAugment
from visiontrain.errors import UserError

log = logging.getLogger(__name__)


class TensorImageDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` with int64 labels; ``__getitems__`` serves a whole batch at once."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    # DataLoader calls this with the sampler's list of indices instead of N __getitem__ calls.
    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``TensorImageDataset``: ``__getitems__`` already returns stacked tensors."""
    return batch


class InMemoryClassificationDataModule(SplitDataModule):
    """Train/val/test splits held as uint8 tensors; subclasses say how to find, download and read the files.

    The validation split is carved from the official training split with a fixed seed
    (``split_seed``), so ``test/*`` metrics are always on the official test split.
    """

    name: str = ""
    collate_fn = staticmethod(keep_batch)
    class_names: tuple[str, ...] = ()
    num_channels: int = 0
    image_size: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(
        self,
        data_dir: str,
        num_classes: int,
        num_channels: int,
        image_size: int,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 12345,
        download: bool = True,
        crop_padding: int = 0,
        hflip: bool = False,
        augment: str = "none",
        augment_options: Mapping[str, Mapping[str, Any]] | None = None,
        random_erasing: float = 0.0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        # these keys exist in the data config so model configs can interpolate them; they must be true
        for key, given, actual in (
            ("num_classes", num_classes, len(self.class_names)),
            ("num_channels", num_channels, self.num_channels),
            ("image_size", image_size, self.image_size),
        ):
            if given != actual:
                raise UserError(f"data.{key}={given} but {self.name} has {key} {actual}; set data.{key}={actual}.")
        self.data_dir = data_dir
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.download = download
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = BatchAugment(self.mean, self.std, crop_padding, hflip, augment, augment_options, random_erasing)
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.num_channels, self.image_size, self.image_size)

    @property
    def preprocessing(self) -> preprocessing.Spec:
        """What the network sees at test time, for predict.py and exported models."""
        return preprocessing.exact(self.num_channels, self.image_size, self.mean, self.std)

    # --- what a subclass provides -------------------------------------------------------------
    def ensure_files(self, download: bool) -> None:
        """Check the files are present; download them if allowed; else raise a UserError."""
        raise NotImplementedError

    def read_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(uint8 images (N, C, H, W), int64 labels (N,))`` of the official split."""
        raise NotImplementedError

    # --- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Runs on one process per node: the only place a download may happen.
        self.ensure_files(download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.ensure_files(download=False)
        images, labels = self.read_split(train=True)
        if not 0 < self.val_size < len(labels):
            raise UserError(
                f"data.val_size={self.val_size} must be between 1 and {len(labels) - 1} "
                f"(the {self.name} training split has {len(labels)} images)."
            )
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        self.train_set = TensorImageDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorImageDataset(images[val_idx], labels[val_idx])
        self.test_set = TensorImageDataset(*self.read_split(train=False))
        log.info(
            "%s: %d train / %d val (seed %d) / %d official test images",
            self.name,
            len(self.train_set),
            len(self.val_set),
            self.split_seed,
            len(self.test_set),
        )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # two tensors: skip Lightning's generic walk over arbitrary collections on every step
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.augment(images, train=training), labels
