"""Datamodules read the real formats, split correctly, augment per image and fail clearly."""

from __future__ import annotations

import gzip

import pytest
import torch

from tests import formats
from visiontrain.data.batch_transforms import BatchAugment, random_crop, random_hflip
from visiontrain.data.cifar10 import CIFAR10DataModule
from visiontrain.data.imagefolder import ImageFolderDataModule
from visiontrain.data.mnist import MNISTDataModule, read_idx
from visiontrain.errors import UserError


def mnist(data_dir, **kwargs) -> MNISTDataModule:
    return MNISTDataModule(
        data_dir=str(data_dir),
        num_classes=10,
        num_channels=1,
        image_size=28,
        download=False,
        **{"val_size": 100, **kwargs},
    )


def cifar(data_dir, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(
        data_dir=str(data_dir),
        num_classes=10,
        num_channels=3,
        image_size=32,
        download=False,
        **{"val_size": 50, **kwargs},
    )


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_reads_idx_files_gzipped_or_not(tmp_path, compress):
    formats.write_mnist(tmp_path, n_train=300, n_test=70, compress=compress)
    dm = mnist(tmp_path)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (200, 100, 70)
    images, labels = formats.class_images(70, 28, 1, seed=2)
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(images[..., 0]))  # the official test split, as is
    assert torch.equal(dm.test_set.labels, torch.from_numpy(labels).long())


def test_validation_is_carved_from_train_with_a_fixed_seed(datasets):
    a, b, c = mnist(datasets), mnist(datasets), mnist(datasets, split_seed=7)
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)
    # disjoint and together the whole official training split
    train_rows = {bytes(x.numpy()) for x in a.train_set.images}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val_set.images)
    assert len(a.train_set) + len(a.val_set) == 600


def test_loader_serves_whole_batches_from_memory(datasets):
    dm = mnist(datasets, batch_size=32)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.uint8 and labels.shape == (32,)
    assert len(dm.train_dataloader()) == 500 // 32  # drop_last on train only
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 100


def test_cifar_archive_and_png_export_give_the_same_tensors(datasets):
    archive = cifar(datasets)
    png = cifar(datasets / "nowhere", png_dir=str(datasets / "cifar10_png"))
    assert archive.source() == "archive" and png.source() == "png"
    for dm in (archive, png):
        dm.setup("fit")
    # PNG folders are read class by class: compare as sets of (image, label)
    for split in ("train", "test"):
        x = {(bytes(i.numpy()), int(label)) for i, label in zip(*archive.read_split(split == "train"))}
        y = {(bytes(i.numpy()), int(label)) for i, label in zip(*png.read_split(split == "train"))}
        assert x == y
    assert archive.test_set.images.shape == (100, 3, 32, 32)


def test_missing_data_names_directory_and_files(tmp_path):
    with pytest.raises(UserError) as err:
        mnist(tmp_path / "empty").prepare_data()
    message = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "download=false" in message
    with pytest.raises(UserError, match="CIFAR-10 not found.*cifar-10-batches-py.*PNG export"):
        cifar(tmp_path / "empty").prepare_data()


def test_corrupt_files_are_named(tmp_path, datasets):
    formats.write_mnist(tmp_path, n_train=200, n_test=50)
    labels = tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x32" + b"\x01" * 10)  # header says 50 labels, 10 present
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is truncated"):
        mnist(tmp_path).setup("fit")
    with pytest.raises(UserError, match="not an MNIST IDX file"):
        read_idx(tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz", 2049, ())

    png_root = tmp_path / "png"
    formats.write_cifar_png(png_root, n_train=40, n_test=20)
    broken = next((png_root / "test" / "cat").iterdir())
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match=f"cannot decode image {broken}"):
        cifar(tmp_path / "none", png_dir=str(png_root), val_size=5).setup("fit")


def test_config_numbers_must_match_the_data(datasets):
    with pytest.raises(UserError, match="data.num_classes=100 but MNIST has num_classes 10"):
        MNISTDataModule(data_dir=str(datasets), num_classes=100, num_channels=1, image_size=28)
    with pytest.raises(UserError, match="data.num_channels=3"):
        MNISTDataModule(data_dir=str(datasets), num_classes=10, num_channels=3, image_size=28)


def test_imagefolder_splits_classes_and_errors(tmp_path, datasets):
    dm = ImageFolderDataModule(root=str(datasets / "folders"), num_classes=3, image_size=32, num_workers=0)
    dm.setup("fit")
    assert dm.class_names == ("class_0", "class_1", "class_2")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (36, 12, 12)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32

    with pytest.raises(UserError, match=r"data.num_classes=5 but .*train has 3 class folders"):
        ImageFolderDataModule(root=str(datasets / "folders"), num_classes=5).setup("fit")

    no_val = formats.write_imagefolder(tmp_path / "noval", val=False)
    dm = ImageFolderDataModule(root=str(no_val), num_classes=3, image_size=32, val_fraction=0.25, num_workers=0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (27, 9)

    broken = sorted((no_val / "train" / "class_1").iterdir())[0]
    broken.write_bytes(b"garbage")
    dm = ImageFolderDataModule(root=str(no_val), num_classes=3, image_size=32, num_workers=0)
    dm.setup("fit")
    with pytest.raises(UserError, match=f"cannot decode image {broken}"):
        for _ in dm.train_dataloader():
            pass


def test_batch_augmentation_is_per_image(datasets):
    torch.manual_seed(0)
    images = torch.arange(64 * 3 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).view(64, 3, 8, 8)
    same = images[:1].expand(64, -1, -1, -1).contiguous()
    cropped = random_crop(same, padding=2)
    assert cropped.shape == same.shape
    assert len({bytes(c.numpy()) for c in cropped}) > 5  # different windows for different images
    flipped = random_hflip(same)
    n_flipped = sum(torch.equal(f, same[0].flip(-1)) for f in flipped)
    assert 10 < n_flipped < 54 and all(torch.equal(f, same[0]) or torch.equal(f, same[0].flip(-1)) for f in flipped)

    augment = BatchAugment(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_padding=2, hflip=True)
    out = augment(images, train=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (images.float() / 255 - 0.5) / 0.25)
