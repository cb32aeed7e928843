"""Base for semantic-segmentation data: paired image / index-mask files, joint augmentation.

A subclass lists ``(image, mask)`` file pairs per split and says how a mask file's values map to
class indices; everything else — decoding, checks with the file named, ``transforms.v2`` with
``tv_tensors.Mask`` (nearest-neighbour resizing, ignore-index padding, photometric changes on the
image only), loaders — lives here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from visiontrain.data import preprocessing
from visiontrain.data.base import IMAGENET_MEAN, IMAGENET_STD, SplitDataModule, load_rgb, undecodable
from visiontrain.data.manifest import SplitContent
from visiontrain.data.samplers import checked_sampler
from visiontrain.data.splits import checked_folds, fold_split
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

Pair = tuple[Path, Path]


def read_index_mask(path: Path) -> np.ndarray:
    """The stored values of a mask PNG (palette indices for palette PNGs), as an (H, W) array."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("P", "L", "I", "I;16", "1"):
                raise UserError(f"mask {path} is a {mask.mode} image; masks must be single-channel index PNGs.")
            return np.array(mask)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot decode mask {path} ({type(err).__name__}: {err}).") from err


def find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def seeded_split(items: Sequence, fractions: Sequence[float], seed: int) -> list[list]:
    """Split ``items`` (in a fixed order) into parts of the given fractions; the last part takes the rest."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = [], 0
    for fraction in fractions:
        count = round(fraction * len(items))
        parts.append([items[i] for i in order[start : start + count]])
        start += count
    parts.append([items[i] for i in order[start:]])
    return parts


class PadToSquare:
    """Pad right and bottom to ``size`` x ``size``: the image with 0, the mask with the ignore index.

    Ours because ``v2.RandomCrop(pad_if_needed=True)`` places the image at a random offset, and
    evaluation must see the same pixels every time.
    """

    def __init__(self, size: int, ignore_index: int) -> None:
        self.size = size
        self.ignore_index = ignore_index

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        height, width = image.shape[-2:]
        padding = [0, 0, self.size - width, self.size - height]
        return v2.functional.pad(image, padding, fill=0), v2.functional.pad(mask, padding, fill=self.ignore_index)


class MaskMapping:
    """Stored mask values -> class indices: ``mapping`` for listed values, ``others`` for the rest
    (``None`` keeps a value as it is). A plain object, so DataLoader workers can pickle it."""

    def __init__(self, mapping: dict[int, int] | None = None, others: int | None = None) -> None:
        self.mapping = dict(mapping or {})
        self.others = others

    def __call__(self, values: np.ndarray) -> np.ndarray:
        classes = values.astype(np.int64)
        if self.others is not None:
            classes = np.full_like(classes, self.others)
        for stored, cls in self.mapping.items():
            classes[values == stored] = cls
        return classes


class SegmentationFiles(Dataset):
    """Decodes one pair, checks it, maps mask values to classes and applies the joint transform."""

    def __init__(
        self, pairs: list[Pair], to_classes: MaskMapping, num_classes: int, ignore_index: int, transform
    ) -> None:
        self.pairs = pairs
        self.to_classes = to_classes
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = load_rgb(str(image_path))
        classes = checked_classes(
            image_path, (image.width, image.height), mask_path, self.to_classes, self.num_classes, self.ignore_index
        )
        image, mask = self.transform(tv_tensors.Image(v2.functional.pil_to_tensor(image)), tv_tensors.Mask(classes))
        return image, mask


def checked_classes(
    image_path: Path,
    image_size: tuple[int, int],
    mask_path: Path,
    to_classes: MaskMapping,
    num_classes: int,
    ignore_index: int,
) -> np.ndarray:
    """The class index of every pixel of a mask, or a UserError naming the file: a mask of another size than its
    image (``image_size``: width, height), or values that are neither a declared class nor the ignore index."""
    values = read_index_mask(mask_path)
    width, height = image_size
    if values.shape != (height, width):
        raise UserError(
            f"mask {mask_path} is {values.shape[1]}x{values.shape[0]} but image {image_path} is {width}x{height}."
        )
    classes = to_classes(values).astype(np.int64)
    bad = np.unique(classes[(classes >= num_classes) & (classes != ignore_index)])
    if bad.size:
        raise UserError(
            f"mask {mask_path} holds values {bad[:10].tolist()} outside the {num_classes} declared classes "
            f"(0-{num_classes - 1}) and the ignore index {ignore_index}."
        )
    return classes


def _fingerprint(image: Path, mask: Path) -> list:
    image_stat, mask_stat = image.stat(), mask.stat()
    return [str(image), image_stat.st_size, image_stat.st_mtime_ns, mask_stat.st_size, mask_stat.st_mtime_ns]


def check_cache_file(rules: str, pairs: Sequence[Pair], kind: str = "checked_masks") -> Path:
    """Where what is known of the masks under ``rules`` is remembered (``kind``: checked_masks, the pairs that passed
    the checks; class_pixels, each mask's pixels per class): one small JSON file per set of mask folders and rules,
    in ``$XDG_CACHE_HOME/visiontrain`` (``~/.cache``), as data folders are often read-only."""
    import hashlib

    folders = sorted({str(Path(mask).parent.resolve()) for _, mask in pairs})
    key = hashlib.sha1(json.dumps([rules, folders]).encode()).hexdigest()[:20]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visiontrain" / kind
    return cache / f"{key}.json"


def check_pairs(pairs: Sequence[Pair], to_classes: MaskMapping, num_classes: int, ignore_index: int, name: str) -> None:
    """Check every (image, mask) pair once, at set-up: sizes agree and mask values are classes or the ignore index.

    Otherwise a bad mask surfaces only when a batch draws it, maybe after hours of training (at test, for a test
    image). Images are not decoded (their header gives the size); masks are. Pairs that passed are remembered by
    file size and modification time, so a second start reads only new or changed files.
    """
    rules = json.dumps([sorted(to_classes.mapping.items()), to_classes.others, num_classes, ignore_index])
    cache = check_cache_file(rules, pairs)
    try:
        passed = json.loads(cache.read_text())
    except (OSError, ValueError):
        passed = {}
    unchanged = {}
    checked = 0
    for image_path, mask_path in pairs:
        fingerprint = _fingerprint(image_path, mask_path)
        if passed.get(str(mask_path)) != fingerprint:
            try:
                with Image.open(image_path) as image:
                    size = image.size
            except Exception as err:
                raise undecodable(str(image_path), err) from err
            checked_classes(image_path, size, mask_path, to_classes, num_classes, ignore_index)
            checked += 1
        unchanged[str(mask_path)] = fingerprint
    if checked:
        log.info("%s: checked %d image/mask pairs (%d remembered from before)", name, checked, len(pairs) - checked)
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps({**passed, **unchanged}))
            os.replace(temporary, cache)


def class_pixel_counts(
    pairs: Sequence[Pair], to_classes: MaskMapping, num_classes: int, ignore_index: int, name: str
) -> list[int]:
    """Pixels per class over the masks of ``pairs`` as stored (full size, before resizing and cropping; ignore-index
    pixels left out). Reading every mask of a large split takes a while, so each mask's counts are remembered by file
    size and modification time (as ``check_pairs`` remembers its checks): a second start reads only new or changed
    masks. The values were checked at set-up: every one is a class or the ignore index."""
    rules = json.dumps([sorted(to_classes.mapping.items()), to_classes.others, num_classes, ignore_index])
    cache = check_cache_file(rules, pairs, kind="class_pixels")
    try:
        remembered = json.loads(cache.read_text())
    except (OSError, ValueError):
        remembered = {}
    start = time.perf_counter()
    total = np.zeros(num_classes, dtype=np.int64)
    counted, read = {}, 0
    for image_path, mask_path in pairs:
        fingerprint = _fingerprint(image_path, mask_path)
        entry = remembered.get(str(mask_path))
        if not entry or entry[0] != fingerprint:
            classes = to_classes(read_index_mask(mask_path))
            pixels = np.bincount(classes[classes != ignore_index].ravel(), minlength=num_classes)[:num_classes]
            entry = [fingerprint, pixels.tolist()]
            read += 1
        counted[str(mask_path)] = entry
        total += np.asarray(entry[1], dtype=np.int64)
    if read:
        log.info("%s: pixels per class counted in %d masks in %.1f s (%d remembered from before)", name, read,
                 time.perf_counter() - start, len(pairs) - read)  # fmt: skip
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps({**remembered, **counted}))
            os.replace(temporary, cache)
    return total.tolist()


class SegmentationDataModule(SplitDataModule):
    """Train/val/test pairs of images and index masks, resized to ``image_size`` squares."""

    name: str = ""
    task = "segmentation"

    def __init__(
        self,
        num_classes: int | None,
        class_names: Sequence[str],
        image_size: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        ignore_index: int = 255,
        split_seed: int = 12345,
        folds: int | None = None,
        fold: int = 0,
        num_workers: int = 2,
        pin_memory: bool = False,
        download: bool = True,
        num_channels: int = 3,
        scale: tuple[float, float] = (0.25, 1.0),
        hflip: bool = True,
        color_jitter: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        sampler: str | None = None,
    ) -> None:
        super().__init__()
        self.sampler = checked_sampler(sampler, self.task)  # none is offered for segmentation: null only
        num_classes = len(class_names) if num_classes is None else num_classes
        if len(class_names) != num_classes:
            raise UserError(
                f"data.num_classes={num_classes} but data.class_names lists {len(class_names)} classes "
                f"({', '.join(class_names)})."
            )
        if num_channels != 3:
            raise UserError(f"data.num_channels={num_channels}: segmentation images are read as RGB, set it to 3.")
        if 0 <= ignore_index < num_classes:
            raise UserError(f"data.ignore_index={ignore_index} is one of the {num_classes} class indices.")
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.num_channels = 3
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.ignore_index = ignore_index
        self.split_seed = split_seed
        self.folds, self.fold = checked_folds(folds, fold)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.download = download
        to_float = [
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean, std),
        ]
        photometric = [v2.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter else []
        self.train_transform = v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True),
                *([v2.RandomHorizontalFlip()] if hflip else []),
                *photometric,  # transforms.v2 applies these to the image only
                *to_float,
            ]
        )
        # evaluation keeps the aspect ratio: longer side to image_size, then padding (never counted as a class)
        self.preprocessing = preprocessing.pad(image_size, mean, std)
        resize = v2.Resize(size=None, max_size=image_size, antialias=True)
        self.eval_transform = v2.Compose([resize, PadToSquare(image_size, ignore_index), *to_float])
        self.train_set = self.val_set = self.test_set = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    # --- what a subclass provides -------------------------------------------------------------
    def ensure_files(self, download: bool) -> None:
        raise NotImplementedError

    def split_pairs(self) -> dict[str, list[Pair]]:
        """``{"train": [...], "val": [...], "test": [...]}`` of (image, mask) paths; with ``folds``, train and val
        from ``fold_pairs``."""
        raise NotImplementedError

    def fold_pairs(self, pool: list[Pair], pool_name: str) -> tuple[list[Pair], list[Pair]]:
        """Train and val pairs of fold ``fold`` of ``folds`` of the training pool (``pool_name`` says what it is)."""
        train, val = fold_split(len(pool), self.folds, self.fold, self.split_seed, pool_name)
        return [pool[i] for i in train], [pool[i] for i in val]

    def seeded_splits(
        self, pairs: list[Pair], test_fraction: float, val_fraction: float, pool_name: str
    ) -> dict[str, list[Pair]]:
        """Train/val/test of data without an official split, from one seeded order of ``pairs``: its head is the
        test split, the next ``val_fraction`` validates; with ``folds`` everything after the test split is the pool
        (``pool_name``), so a fold is tested on the same images as a run without folds."""
        if self.folds is None:
            test, val, train = seeded_split(pairs, [test_fraction, val_fraction], self.split_seed)
        else:
            test, pool = seeded_split(pairs, [test_fraction], self.split_seed)
            train, val = self.fold_pairs(pool, pool_name)
        return {"train": train, "val": val, "test": test}

    def split_contents(self) -> dict[str, SplitContent]:
        contents = {}
        for split, dataset in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            if dataset is not None:
                images, masks = zip(*dataset.pairs) if dataset.pairs else ((), ())
                contents[split] = SplitContent(files=list(images), label_files=list(masks))
        return contents

    # stored mask values -> class indices; subclasses replace it where the files store something else
    mask_mapping = MaskMapping()

    # --- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.ensure_files(download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.ensure_files(download=False)
        splits = self.split_pairs()
        for split, pairs in splits.items():
            if not pairs:
                raise UserError(f"{self.name}: the {split} split is empty.")
        every_pair = [pair for pairs in splits.values() for pair in pairs]
        check_pairs(every_pair, self.mask_mapping, self.num_classes, self.ignore_index, self.name)

        def dataset(split: str, transform) -> SegmentationFiles:
            return SegmentationFiles(splits[split], self.mask_mapping, self.num_classes, self.ignore_index, transform)

        self.train_set = dataset("train", self.train_transform)
        self.val_set = dataset("val", self.eval_transform)
        self.test_set = dataset("test", self.eval_transform)
        log.info(
            "%s: %d train / %d val / %d test images", self.name, *(len(splits[s]) for s in ("train", "val", "test"))
        )

    def class_counts(self) -> list[int] | None:
        """Pixels per class over the training masks (``class_pixel_counts``)."""
        if self.train_set is None:
            return None
        return class_pixel_counts(
            self.train_set.pairs, self.mask_mapping, self.num_classes, self.ignore_index, self.name
        )


def pair_by_stem(image_dir: Path, mask_dir: Path, stems: Sequence[str], mask_suffix: str = ".png") -> list[Pair]:
    """(image, mask) for each stem; an image without its mask (or the reverse) is named in the error."""
    pairs = []
    for stem in stems:
        image = find_image(image_dir, stem)
        if image is None:
            raise UserError(f"no image for {stem!r} in {image_dir} (expected {stem}.jpg or .png).")
        mask = mask_dir / f"{stem}{mask_suffix}"
        if not mask.is_file():
            raise UserError(f"image {image} has no mask: {mask} does not exist.")
        pairs.append((image, mask))
    return pairs
