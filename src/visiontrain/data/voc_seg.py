"""Pascal VOC 2012 segmentation: ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs, 255 = void)
and ``ImageSets/Segmentation/{train,val}.txt``.

VOC's test labels are not public, so the official val set is our test split and val is held out of
train with ``split_seed`` (with ``folds``: one fold of train).
"""

from __future__ import annotations

from pathlib import Path

from visiontrain.data.base import download_attempt
from visiontrain.data.oxford_pet_seg import read_split_file
from visiontrain.data.segmentation import SegmentationDataModule, pair_by_stem, seeded_split
from visiontrain.errors import UserError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


class VOCSegDataModule(SegmentationDataModule):
    name = "Pascal VOC 2012"

    def __init__(self, root: str, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.val_fraction = val_fraction

    def _missing(self) -> list[str]:
        needed = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                  "ImageSets/Segmentation/val.txt")  # fmt: skip
        return [n for n in needed if not (self.root / n).exists()]

    def ensure_files(self, download: bool) -> None:
        if not self._missing():
            return
        import torchvision

        # torchvision lays it out as <root>/VOCdevkit/VOC2012
        reason = download_attempt(
            download,
            lambda: torchvision.datasets.VOCSegmentation(str(self.root.parent.parent), year="2012", download=True),
        )
        missing = self._missing()
        if missing:
            raise UserError(
                f"Pascal VOC 2012 not found: {self.root} lacks {', '.join(missing)} and {reason}; extract "
                "VOCtrainval_11-May-2012.tar and set data.root to its VOCdevkit/VOC2012 folder."
            )

    def split_pairs(self) -> dict[str, list]:
        sets = self.root / "ImageSets" / "Segmentation"

        def pairs(split_file: str) -> list:
            names = read_split_file(sets / split_file)
            return pair_by_stem(self.root / "JPEGImages", self.root / "SegmentationClass", names)

        train = pairs("train.txt")
        if self.folds is not None:
            train, val = self.fold_pairs(train, str(sets / "train.txt"))
        else:
            val, train = seeded_split(train, [self.val_fraction], self.split_seed)
        return {"train": train, "val": val, "test": pairs("val.txt")}
