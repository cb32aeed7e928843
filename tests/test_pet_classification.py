"""Oxford-IIIT Pet breeds as image classification, from the official split files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests import formats
from tests.conftest import compose_config
from visiontrain.cli.train import train
from visiontrain.data.oxford_pet_breeds import OxfordPetBreedsDataModule
from visiontrain.errors import UserError

SMALL = {"image_size": 32, "num_workers": 0, "download": False}


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    return formats.write_oxford_pet_breeds(tmp_path_factory.mktemp("pets") / "oxford-iiit-pet")


def test_breeds_come_from_the_split_files(pets):
    dm = OxfordPetBreedsDataModule(root=str(pets), num_classes=3, val_fraction=1 / 6, **SMALL)
    dm.setup("fit")
    assert dm.class_names == ("Abyssinian", "american_bulldog", "Bengal")  # CLASS-IDs 1, 2, 6 -> 0, 1, 2
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 3, 9)
    assert sorted(label for _, label in dm.test_set.samples) == [0] * 3 + [1] * 3 + [2] * 3
    for path, label in dm.train_set.samples + dm.val_set.samples:
        assert path.stem.rsplit("_", 1)[0] == dm.class_names[label]
    image, label = dm.val_set[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    again = OxfordPetBreedsDataModule(root=str(pets), num_classes=3, val_fraction=1 / 6, **SMALL)
    again.setup("fit")
    assert again.val_set.samples == dm.val_set.samples  # seeded carve-out of trainval
    assert not {p for p, _ in dm.val_set.samples} & {p for p, _ in dm.train_set.samples}


def test_augmented_training_images_keep_shape_and_vary(pets):
    dm = OxfordPetBreedsDataModule(root=str(pets), num_classes=3, augment="trivialaugment", random_erasing=1.0, **SMALL)
    dm.setup("fit")
    first, second = dm.train_set[0][0], dm.train_set[0][0]
    assert first.shape == second.shape == (3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])  # evaluation is deterministic


def test_wrong_num_classes_and_missing_files_fail_in_one_sentence(pets, tmp_path):
    with pytest.raises(UserError, match=r"data.num_classes=37 .* list 3 breeds .*set data.num_classes=3"):
        OxfordPetBreedsDataModule(root=str(pets), num_classes=37, **SMALL).setup("fit")
    with pytest.raises(UserError, match=r"Oxford-IIIT Pet not found: .*nowhere lacks images, annotations/trainval"):
        OxfordPetBreedsDataModule(root=str(tmp_path / "nowhere"), num_classes=3, **SMALL).prepare_data()
    broken = formats.write_oxford_pet_breeds(tmp_path / "broken")
    (broken / "images" / "Bengal_2.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) of .*trainval.txt are missing, e.g. .*Bengal_2.jpg"):
        OxfordPetBreedsDataModule(root=str(broken), num_classes=3, **SMALL).setup("fit")


def test_a_breed_only_in_the_test_list_is_refused(tmp_path):
    """The empty-class rule every classification source shares: a breed the test list names but trainval.txt
    does not could never be learnt."""
    pets = formats.write_oxford_pet_breeds(tmp_path / "pets")
    trainval = pets / "annotations" / "trainval.txt"
    trainval.write_text("".join(line + "\n" for line in trainval.read_text().splitlines() if "Bengal" not in line))
    with pytest.raises(UserError, match=r"class Bengal has no training images \(Bengal has test images\)"):
        OxfordPetBreedsDataModule(root=str(pets), num_classes=3, **SMALL).setup("fit")


def test_pet_breeds_train_and_test_through_the_config(pets, make_config):
    cfg = make_config(
        "train",
        ["data=oxford_pet_breeds", f"data.root={pets}", "data.image_size=32", "data.num_workers=0",
         "data.batch_size=6", "data.augment=randaugment", "data.random_erasing=0.25", "debug=fdr"],
    )  # fmt: skip
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "test/acc_class/american_bulldog" in metrics


DATA_DIR = Path(os.environ.get("DATA_DIR", "/nonexistent"))


@pytest.mark.real_data
@pytest.mark.skipif(not (DATA_DIR / "oxford-iiit-pet" / "annotations" / "test.txt").is_file(), reason="no pet data")
def test_real_pet_subset_is_three_breeds(tmp_path):
    root = DATA_DIR / "oxford-iiit-pet"
    dm = OxfordPetBreedsDataModule(root=str(root), num_classes=3, val_fraction=0.2, **SMALL)
    dm.setup("fit")
    assert dm.class_names == ("Abyssinian", "american_bulldog", "Bengal")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (72, 18, 45)
    cfg = compose_config(
        "train",
        [f"paths.data_dir={DATA_DIR}", "data=oxford_pet_breeds", "data.image_size=64", "data.num_workers=0",
         "data.download=false", "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "extras.print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"],
        tmp_path / "run",
    )  # fmt: skip
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and {f"test/acc_class/{n}" for n in dm.class_names} <= metrics.keys()
