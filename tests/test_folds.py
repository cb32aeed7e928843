"""k-fold cross-validation (data.folds / data.fold): the folds are disjoint, cover the training pool, are stratified
by class where there are classes and stable for a seed; the test split is never folded; bad options are one sentence.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
import torch
from torchvision.datasets import ImageFolder

from tests import formats
from visiontrain.cli.train import train
from visiontrain.data.imagefolder import ImageFolderDataModule
from visiontrain.data.mask_folder import MaskFolderDataModule
from visiontrain.data.mnist import MNISTDataModule
from visiontrain.data.splits import fold_split
from visiontrain.errors import UserError


def check_folds(pool: list, folds: list[tuple[list, list]]) -> None:
    """``folds``: (train, val) items of each fold of ``pool``. The val parts are disjoint and cover the pool; in each
    fold train and val are disjoint and together the pool."""
    vals = [item for _, val in folds for item in val]
    assert len(vals) == len(set(vals)) and set(vals) == set(pool)
    for trained, val in folds:
        assert not set(trained) & set(val) and set(trained) | set(val) == set(pool)
        assert len(trained) + len(val) == len(pool)


def stratified(labels_per_fold: list[list[int]], pool_labels: list[int]) -> bool:
    """Each class's count in each val fold is its count in the pool over the number of folds, give or take one."""
    k, total = len(labels_per_fold), Counter(pool_labels)
    return all(abs(Counter(labels)[c] - n / k) <= 1 for labels in labels_per_fold for c, n in total.items())


# --- the one function every datamodule folds with --------------------------------------------------------------
def test_fold_split_partitions_stratifies_and_is_stable():
    labels = [0] * 30 + [1] * 12 + [2] * 6  # imbalanced on purpose
    folds = [fold_split(labels, 3, f, seed=7, pool_name="the pool") for f in range(3)]
    check_folds(list(range(len(labels))), folds)
    assert stratified([[labels[i] for i in val] for _, val in folds], labels)
    assert folds == [fold_split(labels, 3, f, seed=7, pool_name="the pool") for f in range(3)]
    assert folds[0][1] != fold_split(labels, 3, 0, seed=8, pool_name="the pool")[1]

    plain = [fold_split(10, 4, f, seed=7, pool_name="the pool") for f in range(4)]
    check_folds(list(range(10)), plain)
    assert sorted(len(val) for _, val in plain) == [2, 2, 3, 3]


# --- imagefolder: stratified, train/ and val/ folded together, test/ untouched ---------------------------------
def samples(subset) -> list[tuple[str, int]]:
    """The (path, class) pairs a Subset of the folded image folders serves, without decoding an image."""
    pool = [sample for folder in subset.dataset.datasets for sample in folder.samples]
    return [pool[i] for i in subset.indices]


def imagefolder(root: Path, **options) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), image_size=32, num_workers=0, **options)
    dm.setup("fit")
    return dm


def test_imagefolder_folds_train_and_val_stratified_and_keeps_test(datasets, tmp_path, caplog):
    root = datasets / "folders"  # train/ 36, val/ 12, test/ 12 images of 3 classes
    plain = imagefolder(root)
    pool = plain.train_set.samples + plain.val_set.samples
    with caplog.at_level(logging.INFO, logger="visiontrain.data.splits"):
        modules = [imagefolder(root, folds=4, fold=f) for f in range(4)]
    assert f"fold 2 of 4: 36 train / 12 val images of {root}/train and {root}/val" in caplog.text
    folds = [(samples(dm.train_set), samples(dm.val_set)) for dm in modules]
    check_folds(pool, folds)
    assert stratified([[label for _, label in val] for _, val in folds], [label for _, label in pool])
    assert all(dm.test_set.samples == modules[0].test_set.samples for dm in modules)  # never folded
    assert {path for path, _ in modules[0].test_set.samples}.isdisjoint(path for path, _ in pool)

    assert samples(imagefolder(root, folds=4, fold=1).val_set) == folds[1][1]  # a seed gives the same folds
    assert samples(imagefolder(root, folds=4, fold=1, split_seed=1).val_set) != folds[1][1]

    # without val/ the pool is train/ alone; val_fraction is not used
    no_val = formats.write_imagefolder(tmp_path / "noval", val=False)
    modules = [imagefolder(no_val, folds=3, fold=f, val_fraction=0.5) for f in range(3)]
    folds = [(samples(dm.train_set), samples(dm.val_set)) for dm in modules]
    check_folds(ImageFolder(str(no_val / "train")).samples, folds)
    assert [len(val) for _, val in folds] == [12, 12, 12]


def test_bad_fold_options_are_one_sentence(datasets):
    root = str(datasets / "folders")
    for options, sentence in (
        ({"folds": 5, "fold": 5}, r"^data.fold=5 is out of range for data.folds=5 \(0..4\).$"),
        ({"folds": 5, "fold": -1}, r"^data.fold=-1 is out of range for data.folds=5 \(0..4\).$"),
        ({"folds": 1}, r"^data.folds=1: give a whole number of folds, 2 or more \(null: no folds,"),
        ({"folds": 2.5}, r"^data.folds=2.5: give a whole number of folds"),
        ({"folds": None, "fold": 2}, r"^data.fold=2 chooses a fold, but data.folds is null \(no k-fold\); set"),
    ):
        with pytest.raises(UserError, match=sentence):
            ImageFolderDataModule(root=root, **options)
    # more folds than the smallest class has images: sklearn would only warn and leave the class out of some folds
    with pytest.raises(
        UserError, match=r"^data.folds=17 is more than the 16 images of class 'class_\d' in .*/val: stratified"
    ):
        imagefolder(Path(root), folds=17)


# --- segmentation (mask_folder): plain k-fold of everything but the test images --------------------------------
def mask_folder(root: Path, **options) -> dict[str, list]:
    return MaskFolderDataModule(root=str(root), class_names=["bg", "red", "green"], **options).split_pairs()


def test_mask_folder_folds_all_but_the_test_images(tmp_path):
    flat = formats.write_mask_folder(tmp_path / "flat", n=20)  # 2 test images (test_fraction 0.1)
    plain = mask_folder(flat)
    pool = plain["train"] + plain["val"]
    folds = [mask_folder(flat, folds=3, fold=f) for f in range(3)]
    check_folds(pool, [(f["train"], f["val"]) for f in folds])
    assert [len(f["val"]) for f in folds] == [6, 6, 6]
    assert all(f["test"] == plain["test"] for f in folds)
    assert mask_folder(flat, folds=3, fold=2) == folds[2]
    assert mask_folder(flat, folds=3, fold=2, split_seed=1)["val"] != folds[2]["val"]

    layout = formats.write_mask_folder(tmp_path / "split", n=20, split_folders=True)
    plain = mask_folder(layout)  # train/ 12, val/ 4, test/ 4: train/ and val/ are folded together
    folds = [mask_folder(layout, folds=4, fold=f) for f in range(4)]
    check_folds(plain["train"] + plain["val"], [(f["train"], f["val"]) for f in folds])
    assert all(f["test"] == plain["test"] for f in folds)

    with pytest.raises(UserError, match=r"^data.folds=19 is more than the 18 images of .* outside the test split; "):
        mask_folder(flat, folds=19)


# --- in-memory MNIST: stratified folds of the official training split ------------------------------------------
def mnist(datasets: Path, **options) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(datasets), num_classes=10, num_channels=1, image_size=28, **options)
    dm.setup("fit")
    return dm


def test_mnist_folds_the_training_split_stratified(datasets):
    def images(dataset) -> list[bytes]:  # the synthetic digits are noise: their bytes tell them apart
        return [bytes(image.numpy()) for image in dataset.images]

    plain = mnist(datasets, val_size=100)  # 600 training images, 60 per class
    pool = images(plain.train_set) + images(plain.val_set)
    modules = [mnist(datasets, folds=5, fold=f, val_size=100) for f in range(5)]  # val_size is not used
    check_folds(pool, [(images(dm.train_set), images(dm.val_set)) for dm in modules])
    assert all(torch.bincount(dm.val_set.labels, minlength=10).tolist() == [12] * 10 for dm in modules)
    assert all(torch.equal(dm.test_set.images, plain.test_set.images) for dm in modules)
    assert images(mnist(datasets, folds=5, fold=3).val_set) == images(modules[3].val_set)
    assert images(mnist(datasets, folds=5, fold=3, split_seed=1).val_set) != images(modules[3].val_set)


# --- a real run on one fold -----------------------------------------------------------------------------------
def test_a_run_trains_and_tests_on_one_fold(make_config, caplog):
    data = ["data=imagefolder", "data.root=${paths.data_dir}/folders", "data.image_size=32", "data.num_workers=0"]
    overrides = [*data, "data.batch_size=8", "data.folds=3", "data.fold=1", "trainer.max_epochs=1", "model.net.width=8"]
    with caplog.at_level(logging.INFO, logger="visiontrain.data.splits"):
        metrics = train(make_config("train", overrides))
    assert "fold 1 of 3: 32 train / 16 val images" in caplog.text
    assert {"val/acc", "test/acc"} <= metrics.keys()
