"""Oxford-IIIT Pet trimaps as segmentation: ``images/*.jpg``, ``annotations/trimaps/*.png``,
``annotations/trainval.txt`` and ``test.txt`` (the official split; val is held out of trainval, or with
``folds`` is one fold of it).

Trimap values: 1 = pet, 2 = background, 3 = border (not classified). ``border`` chooses whether the
border is its own class or ignored.
"""

from __future__ import annotations

from pathlib import Path

from visiontrain.data.base import download_attempt
from visiontrain.data.segmentation import MaskMapping, SegmentationDataModule, pair_by_stem, seeded_split
from visiontrain.errors import UserError


def read_split_lines(path: Path) -> list[list[str]]:
    """The fields of each line (``Image CLASS-ID SPECIES BREED-ID``) of an official split file."""
    if not path.is_file():
        raise UserError(f"split file {path} does not exist.")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            rows.append(line.split())
        elif line.strip() == "" and number == 1:
            raise UserError(f"{path} starts with an empty line; expected 'Image CLASS-ID SPECIES BREED-ID' lines.")
    return rows


def read_split_file(path: Path) -> list[str]:
    """Image names, the first field of each line."""
    return [row[0] for row in read_split_lines(path)]


def ensure_pet_files(root: Path, needed: tuple[str, ...], download: bool, target_types: str) -> None:
    """Check ``needed`` (paths under ``root``) exist; else try torchvision's download; else one sentence."""

    def missing() -> list[str]:
        return [n for n in needed if not (root / n).exists()]

    if not missing():
        return
    import torchvision

    # torchvision downloads into <parent>/oxford-iiit-pet
    reason = download_attempt(
        download,
        lambda: torchvision.datasets.OxfordIIITPet(str(root.parent), target_types=target_types, download=True),
    )
    if missing():
        raise UserError(
            f"Oxford-IIIT Pet not found: {root} lacks {', '.join(missing())} and {reason}; put the official "
            "images.tar.gz and annotations.tar.gz, extracted, in a folder named oxford-iiit-pet and set data.root."
        )


class OxfordPetDataModule(SegmentationDataModule):
    name = "Oxford-IIIT Pet"

    def __init__(self, root: str, border: str = "ignore", val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if border not in ("class", "ignore"):
            raise UserError(f"data.border={border!r}: choose 'class' (a third class) or 'ignore'.")
        expected = 3 if border == "class" else 2
        if self.num_classes != expected:
            raise UserError(
                f"data.border={border} gives {expected} classes but data.num_classes={self.num_classes}; set "
                f"data.num_classes={expected} and data.class_names to "
                f"{['background', 'pet', 'border'][:expected]}."
            )
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.mask_mapping = MaskMapping({1: 1, 2: 0, 3: 2 if border == "class" else self.ignore_index}, others=None)

    def ensure_files(self, download: bool) -> None:
        needed = ("images", "annotations/trimaps", "annotations/trainval.txt", "annotations/test.txt")
        ensure_pet_files(self.root, needed, download, target_types="segmentation")

    def split_pairs(self) -> dict[str, list]:
        annotations = self.root / "annotations"

        def pairs(split_file: str) -> list:
            names = read_split_file(annotations / split_file)
            return pair_by_stem(self.root / "images", annotations / "trimaps", names)

        trainval = pairs("trainval.txt")
        if self.folds is not None:
            train, val = self.fold_pairs(trainval, str(annotations / "trainval.txt"))
        else:
            val, train = seeded_split(trainval, [self.val_fraction], self.split_seed)
        return {"train": train, "val": val, "test": pairs("test.txt")}
