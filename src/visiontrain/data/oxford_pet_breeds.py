"""Oxford-IIIT Pet breeds as image classification: ``images/<Breed>_<n>.jpg`` labelled by the official
split files ``annotations/{trainval,test}.txt`` (``Image CLASS-ID SPECIES BREED-ID``).

The classes are the breeds present in the lists (all 37 for the full dataset, 3 for the shared subset),
ordered by their official CLASS-ID and renumbered 0..K-1; a class is named after its images (the file
name without the trailing ``_<n>``, e.g. Abyssinian, american_bulldog). Validation is a seeded fraction
of trainval, or with ``folds`` one fold of it (stratified by breed); test is the official test list. Same
transforms and augmentation options as image folders.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset

from visiontrain.data.base import load_rgb
from visiontrain.data.imagefolder import RGBClassificationDataModule
from visiontrain.data.oxford_pet_seg import ensure_pet_files, read_split_lines
from visiontrain.errors import UserError

log = logging.getLogger(__name__)

SPLIT_FILES = ("annotations/trainval.txt", "annotations/test.txt")


class LabelledImages(Dataset):
    """``(path, label)`` pairs decoded as RGB and passed through ``transform``."""

    def __init__(self, samples: list[tuple[Path, int]], transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(load_rgb(str(path))), label


def breed_name(image_name: str) -> str:
    return image_name.rsplit("_", 1)[0]


class OxfordPetBreedsDataModule(RGBClassificationDataModule):
    name = "Oxford-IIIT Pet breeds"

    def __init__(self, root: str, num_classes: int | None = None, download: bool = True, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.root = Path(root)
        self.download = download
        self._lists: dict[str, list[tuple[str, int]]] | None = None

    def prepare_data(self) -> None:
        ensure_pet_files(self.root, ("images", *SPLIT_FILES), self.download, target_types="category")

    def read_class_names(self) -> tuple[str, ...]:
        if not self.class_names:
            if not all((self.root / file).is_file() for file in SPLIT_FILES):
                self.prepare_data()  # the lists name the classes: fetched now, if allowed
            self.read_lists()
        return self.class_names

    def read_lists(self) -> dict[str, list[tuple[str, int]]]:
        """``{"trainval": [(image name, label)], "test": [...]}`` with labels ``0..K-1`` in CLASS-ID order; sets
        ``class_names`` from the CLASS-IDs (read once)."""
        if self._lists is not None:
            return self._lists
        lists, breeds = {}, {}
        for split, file in zip(("trainval", "test"), SPLIT_FILES):
            entries = []
            for fields in read_split_lines(self.root / file):
                if len(fields) < 2 or not fields[1].isdigit():
                    raise UserError(f"{self.root / file}: line {' '.join(fields)!r} is not 'Image CLASS-ID ...'.")
                name, class_id = fields[0], int(fields[1])
                if breeds.setdefault(class_id, breed_name(name)) != breed_name(name):
                    raise UserError(
                        f"{self.root / file}: CLASS-ID {class_id} is given to {name} and to "
                        f"{breeds[class_id]} images; one id names one breed."
                    )
                entries.append((name, class_id))
            lists[split] = entries
        if not lists["trainval"]:
            raise UserError(f"{self.root / SPLIT_FILES[0]} lists no images.")
        ids = sorted(breeds)
        names = [breeds[i] for i in ids]
        self.class_names = self.agreeing(names, f"the split files of {self.root} list {len(ids)} breeds")
        index = {class_id: i for i, class_id in enumerate(ids)}
        self._lists = {split: [(name, index[class_id]) for name, class_id in rows] for split, rows in lists.items()}
        return self._lists

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ensure_pet_files(self.root, ("images", *SPLIT_FILES), download=False, target_types="category")
        lists = self.read_lists()
        samples = {}
        for split, rows in lists.items():
            samples[split] = [(self.root / "images" / f"{name}.jpg", label) for name, label in rows]
            absent = [str(path) for path, _ in samples[split] if not path.is_file()]
            if absent:
                raise UserError(
                    f"{len(absent)} image(s) of {self.root / f'annotations/{split}.txt'} are missing, e.g. {absent[0]}."
                )
        trainval = samples["trainval"]
        pool = str(self.root / SPLIT_FILES[0])
        train_idx, val_idx = self.held_out([label for _, label in trainval], pool)
        self.train_set = LabelledImages([trainval[i] for i in train_idx], self.train_transform)
        self.val_set = LabelledImages([trainval[i] for i in val_idx], self.eval_transform)
        self.test_set = LabelledImages(samples["test"], self.eval_transform) if samples["test"] else None
        self.check_classes(str(self.root))
        log.info(
            "%s: %d breeds, %d train / %d val (seed %d) / %d official test images",
            self.name,
            len(self.class_names),
            len(self.train_set),
            len(self.val_set),
            self.split_seed,
            len(samples["test"]),
        )

    @property
    def has_test_split(self) -> bool:
        return (self.root / SPLIT_FILES[1]).is_file()
