"""Short runs on the real datasets, when DATA_DIR holds them (CI points it at the shared copies)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import compose_config
from visiontrain.cli.train import train

DATA_DIR = Path(os.environ.get("DATA_DIR", "/nonexistent"))
HAS_MNIST = all(
    (DATA_DIR / "MNIST" / "raw" / f"{name}.gz").is_file() or (DATA_DIR / "MNIST" / "raw" / name).is_file()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
)

pytestmark = pytest.mark.real_data


@pytest.mark.skipif(not HAS_MNIST, reason="DATA_DIR does not hold MNIST/raw")
def test_mnist_one_epoch_reaches_97_percent_on_the_official_test_set(tmp_path):
    cfg = compose_config(
        "train",
        [
            f"paths.data_dir={DATA_DIR}",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "extras.print_config=false",
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
            "data.download=false",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.97
    assert metrics["val/acc"] > 0.95


HAS_PENNFUDAN = (DATA_DIR / "PennFudanPed" / "PedMasks").is_dir()
HAS_PET = (DATA_DIR / "oxford-iiit-pet" / "annotations" / "trimaps").is_dir()
SMOKE = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=2", "data.image_size=64", "data.batch_size=4", "data.download=false",
         "trainer.accelerator=cpu", "extras.print_config=false", "callbacks.progress_bar=null",
         "callbacks.model_summary=null"]  # fmt: skip


@pytest.mark.parametrize(("data", "present"), [("pennfudan_seg", HAS_PENNFUDAN), ("oxford_pet", HAS_PET)])
def test_segmentation_smoke_run_on_real_data(tmp_path, data, present):
    if not present:
        pytest.skip(f"DATA_DIR does not hold the {data} files")
    cfg = compose_config("train", [f"paths.data_dir={DATA_DIR}", "model=unet", f"data={data}", *SMOKE], tmp_path / "r")
    metrics = train(cfg)
    assert 0 < metrics["test/pixel_acc"] <= 1 and 0 <= metrics["test/miou"] <= 1


@pytest.mark.skipif(not (HAS_PENNFUDAN and HAS_PET), reason="DATA_DIR lacks PennFudanPed or oxford-iiit-pet")
def test_real_masks_map_to_the_declared_classes():
    from visiontrain.data.oxford_pet_seg import OxfordPetDataModule
    from visiontrain.data.pennfudan_seg import PennFudanSegDataModule

    common = dict(image_size=64, num_workers=0, download=False)
    pennfudan = PennFudanSegDataModule(root=str(DATA_DIR / "PennFudanPed"), num_classes=2,
                                       class_names=["background", "person"], **common)  # fmt: skip
    pet = OxfordPetDataModule(root=str(DATA_DIR / "oxford-iiit-pet"), num_classes=2,
                              class_names=["background", "pet"], **common)  # fmt: skip
    for dm, total in ((pennfudan, 170), (pet, 135)):
        dm.setup("fit")
        assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == total
        _, mask = dm.test_set[0]
        values = set(mask.unique().tolist())
        assert {0, 1} <= values <= {0, 1, 255}
    assert len(pet.test_set) == 45  # the official test.txt of the subset
