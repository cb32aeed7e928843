"""Bring your own segmentation data: images with index-PNG masks of the same name.

Either ``root/{train,val,test}/{images,masks}/`` or one ``root/images/`` + ``root/masks/`` pair of
folders, split into train/val/test with ``val_fraction`` / ``test_fraction`` and ``split_seed``. With ``folds``
(k-fold) the pool folded is everything but the test images: train/ and val/, or all but the same seeded
``test_fraction``.
Mask values are class indices, named in order by ``data.class_names`` or, left null, by ``root/classes.txt``
(one name per line), else ``background``, ``foreground``; ``ignore_index`` marks pixels without a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from visiontrain.data.segmentation import IMAGE_SUFFIXES, SegmentationDataModule, pair_by_stem
from visiontrain.errors import UserError

CLASS_FILE = "classes.txt"
DEFAULT_CLASSES = ("background", "foreground")


def stems_of(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def listed_classes(root: Path, class_names: Sequence[str] | None, num_classes: int | None) -> tuple[str, ...]:
    """The class names: ``class_names`` as configured, else those of ``root/classes.txt``, else DEFAULT_CLASSES;
    a configured value the file disagrees with is one sentence."""
    file = root / CLASS_FILE
    listed = tuple(line.strip() for line in file.read_text().splitlines() if line.strip()) if file.is_file() else ()
    if listed and class_names is not None and tuple(class_names) != listed:
        raise UserError(f"data.class_names={list(class_names)} but {file} lists {list(listed)}; set one of them.")
    if listed and num_classes is not None and num_classes != len(listed):
        raise UserError(
            f"data.num_classes={num_classes} but {file} lists {len(listed)} classes ({', '.join(listed)}); "
            f"set data.num_classes={len(listed)}."
        )
    return tuple(class_names) if class_names is not None else listed or DEFAULT_CLASSES


class MaskFolderDataModule(SegmentationDataModule):
    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        names = listed_classes(Path(root), class_names, num_classes)
        super().__init__(num_classes=num_classes, class_names=names, **kwargs)
        self.root = Path(root)
        self.name = f"the mask folder {root}"
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def _split_folders(self) -> bool:
        return all((self.root / split / "images").is_dir() for split in ("train", "val", "test"))

    def ensure_files(self, download: bool) -> None:
        if self._split_folders():
            mask_dirs = [self.root / split / "masks" for split in ("train", "val", "test")]
        elif (self.root / "images").is_dir():
            mask_dirs = [self.root / "masks"]
        else:
            raise UserError(
                f"no segmentation data in {self.root}: expected images/ and masks/ there, or "
                "train/, val/ and test/ each holding images/ and masks/."
            )
        for folder in mask_dirs:
            if not folder.is_dir():
                raise UserError(f"mask folder {folder} does not exist.")

    def split_pairs(self) -> dict[str, list]:
        if self._split_folders():
            splits = {
                split: pair_by_stem(self.root / split / "images", self.root / split / "masks",
                                    stems_of(self.root / split / "images"))
                for split in ("train", "val", "test")
            }  # fmt: skip
            if self.folds is not None:  # as with image folders: train/ and val/ are folded together
                pool = f"{self.root}/train and {self.root}/val"
                splits["train"], splits["val"] = self.fold_pairs(splits["train"] + splits["val"], pool)
            return splits
        pairs = pair_by_stem(self.root / "images", self.root / "masks", stems_of(self.root / "images"))
        return self.seeded_splits(pairs, self.test_fraction, self.val_fraction, f"{self.root} outside the test split")
