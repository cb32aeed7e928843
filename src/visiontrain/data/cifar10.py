"""CIFAR-10 from the official python archive or from a PNG export (``train|test/<class>/*.png``).

The official 50k training images (validation carved from them with a fixed seed) and the official
10k test images, or a subset of them (a PNG export may hold fewer test images, in any class balance:
the count of each split is logged at start), decoded once into uint8 tensors. The decoded PNG export
is cached in ``cache_dir`` (see ``DecodedCache``), so later starts skip decoding 51,000 files.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from visiontrain.data.base import download_attempt, read_rgb, require_data_dir
from visiontrain.data.in_memory import InMemoryClassificationDataModule
from visiontrain.errors import UserError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
ARCHIVE_DIR = "cifar-10-batches-py"
ARCHIVE_FILE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


# What the archive's pickles hold (numpy arrays in a dict of bytes and lists, as numpy 1 and 2 name their
# reconstructor); anything else a pickle names is refused before it is looked up, so no code in the file runs.
BATCH_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})  # fmt: skip


class UnexpectedObject(pickle.UnpicklingError):
    pass


class BatchUnpickler(pickle.Unpickler):
    """pickle.Unpickler that finds only BATCH_GLOBALS (the restricted-unpickler recipe of Python's pickle docs)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in BATCH_GLOBALS:
            raise UnexpectedObject(f"{module}.{name}")
        return super().find_class(module, name)


def read_python_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch of the official archive -> (uint8 N x 3 x 32 x 32, labels).

    Read here rather than through ``torchvision.datasets.CIFAR10`` because that class insists on
    the official MD5 of every batch, which rejects re-packed or subset archives with a vague error,
    and unpickles whatever the file holds.
    """
    try:
        with open(path, "rb") as f:
            entry = BatchUnpickler(f, encoding="bytes").load()  # a Python 2 pickle of bytes keys
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = torch.as_tensor(entry.get(b"labels", entry.get(b"fine_labels")), dtype=torch.long)
    except UnexpectedObject as err:
        raise UserError(
            f"{path} holds objects other than the arrays, lists and bytes of a CIFAR-10 python batch ({err}); "
            "it was not read, as loading it could run code."
        ) from None
    except Exception as err:
        raise UserError(f"{path} is not a readable CIFAR-10 python batch ({type(err).__name__}: {err}).") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise UserError(f"{path} has data of shape {data.shape}, expected (N, 3072) with N labels.")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels


def png_files(split_dir: Path) -> tuple[list[Path], list[int]]:
    """The image files of ``split_dir/<class>/`` in class order (airplane ... truck = 0 ... 9), sorted by name
    within a class, and their labels."""
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if tuple(folders) != CIFAR10_CLASSES:
        raise UserError(
            f"{split_dir} should hold one folder per CIFAR-10 class ({', '.join(CIFAR10_CLASSES)}), "
            f"found: {', '.join(folders) or 'none'}."
        )
    files, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        with os.scandir(split_dir / name) as entries:
            found = sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        files += [split_dir / name / f for f in found]
        labels += [label] * len(found)
    return files, labels


class CIFAR10DataModule(InMemoryClassificationDataModule):
    name = "CIFAR-10"
    class_names = CIFAR10_CLASSES
    num_channels = 3
    image_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    official_test_size = 10000

    def __init__(self, *args, png_dir: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the PNG export's root (holding train/ and test/); the python archive lives in data_dir
        self.png_dir = Path(png_dir) if png_dir else Path(self.data_dir) / "cifar10"

    @property
    def archive_dir(self) -> Path:
        return Path(self.data_dir) / ARCHIVE_DIR

    def source(self) -> str | None:
        """Which copy is present: 'archive' (python batches), 'png' (image export) or None."""
        if all((self.archive_dir / name).is_file() for name in TRAIN_BATCHES + TEST_BATCHES):
            return "archive"
        if (self.png_dir / "train").is_dir() and (self.png_dir / "test").is_dir():
            return "png"
        return None

    def ensure_files(self, download: bool) -> None:
        if self.source():
            return
        searched = f"{self.archive_dir} ({', '.join(TRAIN_BATCHES + TEST_BATCHES)}) and no PNG export in {self.png_dir}"
        layout = f"{ARCHIVE_DIR}/ (or set data.png_dir to a PNG export)"
        require_data_dir(self.data_dir, "CIFAR-10", searched, layout, download)
        import torchvision

        tarball = Path(self.data_dir) / ARCHIVE_FILE
        if tarball.is_file():  # downloaded earlier, never extracted
            reason = f"{tarball} could not be extracted"
            with contextlib.suppress(Exception):
                torchvision.datasets.utils.extract_archive(str(tarball), self.data_dir)
        else:
            reason = download_attempt(
                download, lambda: torchvision.datasets.CIFAR10(self.data_dir, train=True, download=True), self.data_dir
            )
        if not self.source():
            raise UserError(
                f"CIFAR-10 not found: neither the python archive in {self.archive_dir} "
                f"({', '.join(TRAIN_BATCHES + TEST_BATCHES)}) nor a PNG export in {self.png_dir} "
                f"(train/<class>/*.png and test/<class>/*.png) is there, and {reason}; "
                f"put {ARCHIVE_FILE} (or its extracted folder) in {self.data_dir}, point DATA_DIR (or data.data_dir) "
                "at the folder holding it, or set data.png_dir."
            )

    def read_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source() == "archive":
            parts = [read_python_batch(self.archive_dir / b) for b in (TRAIN_BATCHES if train else TEST_BATCHES)]
            images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            images, labels = self._read_png_split(self.png_dir / ("train" if train else "test"))
        if labels.min() < 0 or labels.max() >= 10:
            raise UserError(f"CIFAR-10 labels outside 0-9 in {self.archive_dir}.")
        return images, labels

    def split_files(self, train: bool) -> tuple[Path, list[Path]] | None:
        if self.source() != "png":  # the archive's five pickles read in about a second: nothing to cache
            return None
        split_dir = self.png_dir / ("train" if train else "test")
        return split_dir, png_files(split_dir)[0]

    def source_files(self, train: bool) -> list[Path]:
        return [self.archive_dir / name for name in (TRAIN_BATCHES if train else TEST_BATCHES)]

    def _read_png_split(self, split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        files, labels = png_files(split_dir)
        with ThreadPoolExecutor(max_workers=8) as pool:
            images = list(pool.map(read_rgb, files))
        for path, image in zip(files, images):
            if image.shape != (3, 32, 32):
                raise UserError(f"{path} is {tuple(image.shape[1:])} pixels; CIFAR-10 images are 32x32.")
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)
