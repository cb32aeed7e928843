"""What every datamodule shares: its ``spec`` (what the data is, for everything outside data/), loaders for its
three splits (the training split drawn as ``data.sampler`` says), what each split holds (for the split manifest),
the download attempt that ends in one sentence when the files cannot be had, and the RGB image readers that name a
file they cannot decode."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image

from visiontrain.data import samplers
from visiontrain.data.manifest import SplitContent
from visiontrain.data.spec import DataSpec
from visiontrain.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# the first bytes of each format the readers below take, and the suffixes that promise it
IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}  # fmt: skip
SUFFIX_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WebP",
}  # fmt: skip


def undecodable(path: str | Path, err: BaseException) -> UserError:
    """The one sentence for an image file no decoder took: the file and what is wrong with it, told from its
    first bytes. The decoders' own texts are not shown: torchvision's name the source files of its build."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as read_err:
        return UserError(f"cannot read image {path}: {read_err.strerror or type(read_err).__name__}.")
    if not head:
        return UserError(f"cannot decode image {path}: the file is empty.")
    found = next((name for magic, name in IMAGE_SIGNATURES.items() if head.startswith(magic)), None)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        found = "WebP"
    if found:
        problem = f"it is a damaged or truncated {found} image"
    elif Path(path).suffix.lower() in SUFFIX_FORMATS:
        problem = f"not a valid {SUFFIX_FORMATS[Path(path).suffix.lower()]} image"
    else:
        problem = f"not an image in a format read here ({', '.join(dict.fromkeys(SUFFIX_FORMATS.values()))})"
    return UserError(f"cannot decode image {path}: {problem}.")


def load_rgb(path: str) -> Image.Image:
    """PIL loader that names the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:
        raise undecodable(path, err) from err


def read_rgb(path: str | Path) -> torch.Tensor:
    """uint8 ``(3, H, W)`` RGB, decoded by torchvision, else by PIL (BMP, TIFF: torchvision reads neither);
    a file neither can decode ends in ``undecodable``'s one sentence."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except Exception:
        pass
    try:
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as err:
        raise undecodable(path, err) from err


def require_data_dir(data_dir: str | Path, dataset: str, searched: str, layout: str, download: bool) -> None:
    """Stop when the data folder does not exist and nothing may be downloaded into it: a mistyped DATA_DIR is
    named as such. ``searched``: the files looked for; ``layout``: what DATA_DIR should hold."""
    if Path(data_dir).is_dir() or download:
        return
    raise UserError(
        f"{dataset} not found: the data folder {data_dir} does not exist, so there is no {searched}; "
        f"point DATA_DIR (or data.data_dir) at the folder holding {layout}."
    )


def download_attempt(download: bool, fetch: Callable[[], Any], data_dir: str | Path | None = None) -> str:
    """Run ``fetch`` when downloads are allowed; return why the files may still be missing, for the error
    (the failure's whole text on one line: torchvision puts the reason after a line ending in a colon).

    A data folder that did not exist before a failed download is removed again: a mistyped DATA_DIR is
    reported as missing, not left behind as an empty tree.
    """
    if not download:
        return "data.download=false"
    folder = Path(data_dir) if data_dir is not None else None
    existed = folder is None or folder.is_dir()
    before = set(folder.iterdir()) if folder is not None and existed else set()
    try:
        fetch()
    except Exception as err:  # offline, proxy, server gone: all end in the same advice
        reason = f"the download failed ({type(err).__name__}: {' '.join(str(err).split())})"
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
            return f"the data folder {folder} does not exist and {reason}"
        if folder is not None:  # what the failed download made in the user's folder (MNIST/raw/, a part file)
            for made in set(folder.iterdir()) - before:
                if made.is_dir():
                    shutil.rmtree(made, ignore_errors=True)
                else:
                    made.unlink(missing_ok=True)
        return reason
    return "the download did not provide them"


class SplitDataModule(LightningDataModule):
    """``train_set`` / ``val_set`` / ``test_set`` served as DataLoaders (shuffled, full batches for training), and
    ``spec``, the one thing the rest of visiontrain reads about the data. Each datamodule fills in the
    attributes below and says where its class names come from (``read_class_names``)."""

    name: str = ""
    task: str = ""  # a kind of visiontrain.kinds, set by each family's base class
    input_shape: tuple[int, int, int] | None = None
    preprocessing: dict[str, Any]
    # as the config gives it; None: the data's own count, known once its class names are read
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    batch_size: int
    eval_batch_size: int
    num_workers: int
    pin_memory: bool
    collate_fn: Callable | None = None
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None
    # data.sampler (visiontrain.data.samplers): None shuffles; set with ``samplers.checked_sampler`` by each family
    sampler: str | None = None
    repeat_threshold: float = samplers.DEFAULT_REPEAT_THRESHOLD

    @property
    def spec(self) -> DataSpec:
        return DataSpec(
            name=self.name,
            task=self.task,
            class_names=self.read_class_names(),
            input_shape=self.input_shape,
            preprocessing=self.preprocessing,
            has_test_split=self.has_test_split,
        )

    @property
    def has_test_split(self) -> bool:
        return True

    def read_class_names(self) -> tuple[str, ...]:
        """The class names; a datamodule whose files state them (class folders, a category list) reads them here,
        once, and checks a ``data.num_classes`` given in the config against them (``agreeing``)."""
        return self.class_names

    def agreeing(self, names: Sequence[str], counted: str) -> tuple[str, ...]:
        """``names`` as the data states them, ``counted`` saying so (``"<root>/train has 3 class folders"``); a
        ``data.num_classes`` given in the config must be their number, one sentence otherwise."""
        if self.num_classes is not None and self.num_classes != len(names):
            raise UserError(
                f"data.num_classes={self.num_classes} but {counted} ({', '.join(names)}); "
                f"set data.num_classes={len(names)}."
            )
        self.num_classes = len(names)
        return tuple(names)

    def class_counts(self) -> list[int] | None:
        """How much of each class the training split holds, in class order, once set up: images per class for
        classification, labelled pixels per class for segmentation. Tasks weigh their loss by it
        (``model.class_weights=balanced``). None: this data does not count its classes."""
        return None

    # --- what each split holds, and how the training split is drawn -----------------------------------
    def split_contents(self) -> dict[str, SplitContent]:
        """What each split of the set-up data holds, for the split manifest (visiontrain.data.manifest): its files,
        or its in-memory images. Each family of datamodules says it; {} (the default): nothing to record."""
        return {}

    def hash_cache_dir(self) -> Path | None:
        """Where the manifest's file hashes are remembered; None: the user cache folder."""
        return None

    def train_labels(self) -> list[int]:
        """Classification: the class of each training image, in the training set's order (``data.sampler=balanced``)."""
        raise NotImplementedError

    def train_image_classes(self) -> list[set[int]]:
        """Detection: the object classes (labels ``1..K``) in each training image (``data.sampler=repeat_factor``)."""
        raise NotImplementedError

    def epoch_sampler(self) -> samplers.EpochSeeded | None:
        """The training split's draw for one epoch as ``data.sampler`` says; None: a plain shuffle."""
        if self.sampler == "balanced":
            return samplers.BalancedSampler(self.train_labels(), self.read_class_names(), samplers.run_seed())
        if self.sampler == "repeat_factor":
            names = self.read_class_names()
            return samplers.RepeatFactorSampler(
                self.train_image_classes(), self.repeat_threshold, names, samplers.run_seed()
            )
        return None

    def sharded(self, sampler: samplers.EpochSeeded, **grouping: Any) -> Sampler[int]:
        """``sampler``'s epoch, this process's share of it under DDP (``samplers.ShardedSampler``)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return samplers.ShardedSampler(sampler, num_replicas=world, rank=rank, **grouping)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        drawn = self.epoch_sampler() if train else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and drawn is None,
            sampler=self.sharded(drawn) if drawn is not None else None,
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
