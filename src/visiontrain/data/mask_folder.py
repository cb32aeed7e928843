"""Bring your own segmentation data: images with index-PNG masks of the same name.

Either ``root/{train,val,test}/{images,masks}/`` or one ``root/images/`` + ``root/masks/`` pair of
folders, split into train/val/test with ``val_fraction`` / ``test_fraction`` and ``split_seed``.
Mask values are class indices (``class_names`` lists them in order); ``ignore_index`` marks pixels
without a class.
"""

from __future__ import annotations

from pathlib import Path

from visiontrain.data.segmentation import IMAGE_SUFFIXES, SegmentationDataModule, pair_by_stem, seeded_split
from visiontrain.errors import UserError


def stems_of(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class MaskFolderDataModule(SegmentationDataModule):
    def __init__(self, root: str, val_fraction: float = 0.1, test_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
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
            return {
                split: pair_by_stem(self.root / split / "images", self.root / split / "masks",
                                    stems_of(self.root / split / "images"))
                for split in ("train", "val", "test")
            }  # fmt: skip
        pairs = pair_by_stem(self.root / "images", self.root / "masks", stems_of(self.root / "images"))
        test, val, train = seeded_split(pairs, [self.test_fraction, self.val_fraction], self.split_seed)
        return {"train": train, "val": val, "test": test}
