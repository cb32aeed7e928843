"""Base for small datasets that fit in memory as decoded uint8 tensors (MNIST, CIFAR-10).

Images are decoded once, kept as one ``(N, C, H, W)`` uint8 tensor, fetched a whole batch per
indexing operation, and augmented/normalised as a batch on the training device after transfer.
No per-sample PIL decoding, no per-sample Python transform: this is where the speed comes from
(the same idea as airbench), and a GPU-resident pipeline fits in without redesign.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import xxhash
from torch.utils.data import Dataset

from visiontrain.data import preprocessing
from visiontrain.data.base import SplitDataModule
from visiontrain.data.batch_transforms import BatchAugment
from visiontrain.data.manifest import SplitContent
from visiontrain.data.samplers import checked_sampler
from visiontrain.data.splits import check_every_class_present, checked_folds, fold_split
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


def fingerprint(files: Sequence[Path]) -> str:
    """A digest of the files' names, sizes and modification times: changes when any file is added,
    removed, renamed or rewritten."""
    digest = hashlib.sha256()
    for path in files:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class DecodedCache:
    """Decoded splits kept as ``.pt`` files of uint8 images and int64 labels in ``directory``.

    One file per (dataset, source folder, split), named with the fingerprint of its source files, so a
    change to any of them (name, size, mtime) makes the old file stale: it is deleted and the split
    decoded again. Written to a temporary file and renamed, so a crash never leaves half a cache;
    read with ``weights_only=True``. Each file carries the key it was built for (its name) and a checksum of
    its arrays (``checksum``): a file changed on disk afterwards (bytes flipped, another split copied over it)
    is decoded again with one warning, never trained on.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def path(self, dataset: str, source: Path, split: str, files: Sequence[Path]) -> tuple[Path, str]:
        name = "".join(c if c.isalnum() else "_" for c in dataset.lower())
        source_id = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:12]
        prefix = f"{name}-{source_id}-{split}-"
        return self.directory / f"{prefix}{fingerprint(files)[:20]}.pt", prefix

    def load(self, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            images, labels = entry["images"], entry["labels"]
        except Exception as err:  # unreadable or from another version: decode again
            log.warning("ignoring the unreadable cache %s (%s: %s)", path, type(err).__name__, err)
            return None
        if "checksum" not in entry:  # written before caches carried one
            log.info("the decoded-image cache %s has no checksum: decoding again", path)
            return None
        if entry.get("key") != path.name or entry["checksum"] != checksum(images, labels):
            log.warning(
                "the decoded-image cache %s does not match its checksum (changed on disk?): decoding again", path
            )
            return None
        return images, labels

    def save(self, path: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(f"{prefix}*.pt"):
                stale.unlink(missing_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            images = images.contiguous()
            entry = {"images": images, "labels": labels, "key": path.name, "checksum": checksum(images, labels)}
            torch.save(entry, temporary)
            os.replace(temporary, path)
        except OSError as err:  # a read-only or full disk costs the next start time, not this run
            log.warning("could not write the decoded-image cache %s (%s)", path, err)


def checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    """XXH3-128 of the arrays' bytes, named with its algorithm: a non-cryptographic hash, as it guards against
    changed files, not adversaries, and a fraction of the cache's own read (bench/cache_checksum.py)."""
    digest = xxhash.xxh3_128()
    for tensor in (images, labels):
        digest.update(tensor.contiguous().view(torch.uint8).numpy().data)
    return f"xxh3_128:{digest.hexdigest()}"


def keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``TensorImageDataset``: ``__getitems__`` already returns stacked tensors."""
    return batch


class InMemoryClassificationDataModule(SplitDataModule):
    """Train/val/test splits held as uint8 tensors; subclasses say how to find, download and read the files.

    The validation split is carved from the official training split with a fixed seed
    (``split_seed``): ``val_size`` images, or with ``folds`` fold ``fold`` of the stratified k-fold split
    (visiontrain.data.splits). ``test/*`` metrics are always on the official test split.
    """

    name: str = ""
    task = "classification"
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
        folds: int | None = None,
        fold: int = 0,
        download: bool = True,
        crop_padding: int = 0,
        hflip: bool = False,
        augment: str = "none",
        augment_options: Mapping[str, Mapping[str, Any]] | None = None,
        random_erasing: float = 0.0,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
        sampler: str | None = None,
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
        self.folds, self.fold = checked_folds(folds, fold)
        self.download = download
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.sampler = checked_sampler(sampler, self.task)
        # decoded splits of file-per-image sources are kept here (see DecodedCache); None: decode every start
        self.cache = DecodedCache(cache_dir) if cache_dir else None
        self.augment = BatchAugment(self.mean, self.std, crop_padding, hflip, augment, augment_options, random_erasing)
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None
        self.cache_used: dict[str, bool] = {}  # split -> whether the last setup read it from the cache
        self.official_indices: dict[str, list[int]] = {}  # split -> its images' places in the official split
        self.listed: dict[str, tuple[Path, list[Path]] | None] = {}  # official split -> what split_files gave

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.num_channels, self.image_size, self.image_size)

    @property
    def preprocessing(self) -> preprocessing.Pipeline:
        """What the network sees at test time, for predict.py and exported models."""
        return preprocessing.exact(self.num_channels, self.image_size, self.mean, self.std)

    # --- what a subclass provides -------------------------------------------------------------
    def ensure_files(self, download: bool) -> None:
        """Check the files are present; download them if allowed; else raise a UserError."""
        raise NotImplementedError

    def read_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(uint8 images (N, C, H, W), int64 labels (N,))`` of the official split."""
        raise NotImplementedError

    def split_files(self, train: bool) -> tuple[Path, list[Path]] | None:
        """``(folder, files)`` that ``read_split`` decodes, for sources slow to decode (one file per image):
        their decoded arrays are then cached in ``cache_dir``. None (the default): read without a cache."""
        return None

    def source_files(self, train: bool) -> list[Path]:
        """The array files ``read_split`` reads when ``split_files`` is None (their fingerprint in the manifest)."""
        return []

    # --- reading with the cache ----------------------------------------------------------------
    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``read_split``, through the decoded-image cache when there is one and the source is files."""
        split = "train" if train else "test"
        start = time.perf_counter()
        listed = self.split_files(train) if self.cache is not None else None
        if self.cache is not None:  # kept for the split manifest: tens of thousands of paths are worth listing once
            self.listed[split] = listed
        if listed is None:
            return self.read_split(train)
        folder, files = listed
        path, prefix = self.cache.path(self.name, folder, split, files)
        cached = self.cache.load(path)
        if cached is not None:
            self.cache_used[split] = True
            log.info("%s %s: %d images from the cache %s (%.1f s)", self.name, split, len(cached[1]), path,
                     time.perf_counter() - start)  # fmt: skip
            return cached
        images, labels = self.read_split(train)
        self.cache_used[split] = False
        self.cache.save(path, prefix, images, labels)
        log.info("%s %s: decoded %d files in %.1f s, cached in %s", self.name, split, len(files),
                 time.perf_counter() - start, path)  # fmt: skip
        return images, labels

    # --- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Runs on one process per node: the only place a download may happen.
        self.ensure_files(download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.ensure_files(download=False)
        images, labels = self.load_split(train=True)
        if self.folds is not None:  # data.folds replaces data.val_size
            pool = f"the {self.name} training split"
            train_idx, val_idx = fold_split(labels, self.folds, self.fold, self.split_seed, pool, self.class_names)
        else:
            if not 0 <= self.val_size < len(labels):
                raise UserError(
                    f"data.val_size={self.val_size} must be between 0 (no validation split) and {len(labels) - 1} "
                    f"(the {self.name} training split has {len(labels)} images)."
                )
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        self.train_set = TensorImageDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorImageDataset(images[val_idx], labels[val_idx]) if len(val_idx) else None
        self.test_set = TensorImageDataset(*self.load_split(train=False))
        self.official_indices = {
            "train": torch.as_tensor(train_idx).tolist(),
            "val": torch.as_tensor(val_idx).tolist(),
            "test": list(range(len(self.test_set))),
        }
        log.info(
            "%s: %d train / %d val (seed %d) / %d test images%s",
            self.name,
            len(self.train_set),
            len(self.val_set) if self.val_set is not None else 0,
            self.split_seed,
            len(self.test_set),
            self.test_split_note(len(self.test_set)),
        )
        splits = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        counts = {
            split: torch.bincount(dataset.labels, minlength=self.num_classes).tolist()
            for split, dataset in splits.items()
            if dataset is not None
        }
        for split, per_class in counts.items():
            # in the run's log file, not on the console: ten numbers per split are for looking up
            log.info("%s %s images per class: %s", self.name, split, per_class, extra={"console": False})
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        check_every_class_present(self.name, names, counts)

    def class_counts(self) -> list[int] | None:
        if self.train_set is None:
            return None
        return torch.bincount(self.train_set.labels, minlength=self.num_classes).tolist()

    def split_contents(self) -> dict[str, SplitContent]:
        """A file-per-image source (a PNG export): each split's files; array files: the decoded images, named by
        their place in the official split (``train#12``), and the array files they come from."""
        contents = {}
        listings = {
            official: self.listed[official] if official in self.listed else self.split_files(official == "train")
            for official in ("train", "test")
        }
        for split, dataset in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            if dataset is None:
                continue
            official = "test" if split == "test" else "train"
            indices = self.official_indices[split]
            labels = [self.class_names[k] for k in dataset.labels.tolist()]
            listed = listings[official]
            if listed is not None:
                files = listed[1]
                contents[split] = SplitContent(files=[files[i] for i in indices], labels=labels)
            else:
                names = [f"{official}#{i}" for i in indices]
                sources = self.source_files(train=official == "train")
                contents[split] = SplitContent(images=dataset.images, names=names, sources=sources, labels=labels)
        return contents

    def hash_cache_dir(self) -> Path | None:
        return self.cache.directory if self.cache is not None else None  # beside the decoded splits

    def train_labels(self) -> list[int]:
        return self.train_set.labels.tolist()

    def test_split_note(self, size: int) -> str:
        """Said after the test count when the test split is not the official one (e.g. a subset)."""
        official = getattr(self, "official_test_size", None)
        if official and size != official:
            return f" (the official test split has {official}: report test figures on these {size} only)"
        return ""

    def val_dataloader(self):
        # data.val_size=0: no validation split, no validation loop (Lightning skips an empty list)
        return super().val_dataloader() if self.val_set is not None else []

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # two tensors: skip Lightning's generic walk over arbitrary collections on every step
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.augment(images, train=training), labels
