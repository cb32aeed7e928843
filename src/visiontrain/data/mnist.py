"""MNIST from its official IDX files: 60k train (validation carved from it), 10k official test."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from visiontrain.data.base import download_attempt, require_data_dir
from visiontrain.data.in_memory import InMemoryClassificationDataModule
from visiontrain.errors import UserError

# name -> (magic number, dims after the first) of the four official files
MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, (28, 28)),
    "train-labels-idx1-ubyte": (2049, ()),
    "t10k-images-idx3-ubyte": (2051, (28, 28)),
    "t10k-labels-idx1-ubyte": (2049, ()),
}


def read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> torch.Tensor:
    """Read a uint8 IDX file, gzipped or not.

    Our own reader because torchvision's only reads the uncompressed files, and the official
    distribution (and many mirrors) ship only the ``.gz``.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read MNIST file {path}: {err}") from err
    ndim = len(item_shape) + 1
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise UserError(f"{path} is not an MNIST IDX file (expected magic number {magic}).")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != item_shape or len(raw) != header + int(np.prod(dims)):
        raise UserError(f"{path} is truncated or malformed: header says {dims}, file has {len(raw)} bytes.")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy())


class MNISTDataModule(InMemoryClassificationDataModule):
    name = "MNIST"
    class_names = tuple(str(d) for d in range(10))
    num_channels = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)

    @property
    def raw_dir(self) -> Path:
        # torchvision's layout, so a folder torchvision downloaded into works as is
        return Path(self.data_dir) / "MNIST" / "raw"

    def _find(self, name: str) -> Path | None:
        for candidate in (self.raw_dir / name, self.raw_dir / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _missing(self) -> list[str]:
        return [name for name in MNIST_FILES if self._find(name) is None]

    def ensure_files(self, download: bool) -> None:
        if not self._missing():
            return
        expected = ", ".join(n + "[.gz]" for n in MNIST_FILES)
        require_data_dir(self.data_dir, "MNIST", f"{self.raw_dir} with {expected}", "MNIST/raw/", download)

        def fetch() -> None:
            import torchvision

            torchvision.datasets.MNIST(self.data_dir, train=True, download=True)
            torchvision.datasets.MNIST(self.data_dir, train=False, download=True)

        reason = download_attempt(download, fetch, self.data_dir)
        missing = self._missing()
        if missing:
            raise UserError(
                f"MNIST not found: {self.raw_dir} lacks {', '.join(n + '[.gz]' for n in missing)} and {reason}; "
                "put the four official IDX files there (gzipped or not) or point DATA_DIR (or data.data_dir) "
                "at a folder holding MNIST/raw/."
            )

    def source_files(self, train: bool) -> list[Path]:
        prefix = "train" if train else "t10k"
        return [self._find(f"{prefix}-images-idx3-ubyte"), self._find(f"{prefix}-labels-idx1-ubyte")]

    def read_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "train" if train else "t10k"
        image_name, label_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
        image_path, label_path = self._find(image_name), self._find(label_name)
        images = read_idx(image_path, *MNIST_FILES[image_name])
        labels = read_idx(label_path, *MNIST_FILES[label_name]).long()
        if len(images) != len(labels):
            raise UserError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels.")
        if labels.max() >= 10:
            raise UserError(f"{label_path} holds labels outside 0-9.")
        return images.unsqueeze(1), labels
