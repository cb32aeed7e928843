"""What every datamodule shares: loaders for its three splits, the download attempt that ends in one
sentence when the files cannot be had, and the RGB image loader that names a file it cannot decode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from visiontrain.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str) -> Image.Image:
    """PIL loader that names the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:
        raise UserError(f"cannot decode image {path} ({type(err).__name__}: {err}).") from err


def download_attempt(download: bool, fetch: Callable[[], Any]) -> str:
    """Run ``fetch`` when downloads are allowed; return why the files may still be missing, for the error."""
    if not download:
        return "data.download=false"
    try:
        fetch()
    except Exception as err:  # offline, proxy, server gone: all end in the same advice
        return f"the download failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    return "the download did not provide them"


class SplitDataModule(LightningDataModule):
    """``train_set`` / ``val_set`` / ``test_set`` served as DataLoaders (shuffled, full batches for training)."""

    name: str = ""
    batch_size: int
    eval_batch_size: int
    num_workers: int
    pin_memory: bool
    collate_fn: Callable | None = None
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > batch_size,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise UserError(f"{self.name} has no test split, so there is nothing to test on; set test=false.")
        return self._loader(self.test_set, self.eval_batch_size, train=False)
