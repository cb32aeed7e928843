"""Datamodules read the real formats, split correctly, augment per image and fail clearly."""

from __future__ import annotations

import gzip
import os
import re
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from tests import formats
from visiontrain.data.base import load_rgb, read_rgb
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
        **{"val_size": 100, "download": False, **kwargs},
    )


def cifar(data_dir, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(
        data_dir=str(data_dir),
        num_classes=10,
        num_channels=3,
        image_size=32,
        **{"val_size": 50, "download": False, **kwargs},
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
    (tmp_path / "empty").mkdir()  # the folder exists; the files do not
    with pytest.raises(UserError) as err:
        mnist(tmp_path / "empty").prepare_data()
    message = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "download=false" in message
    with pytest.raises(UserError, match="CIFAR-10 not found.*cifar-10-batches-py.*PNG export"):
        cifar(tmp_path / "empty").prepare_data()


@pytest.fixture
def offline(monkeypatch) -> list[str]:
    """torchvision's downloads fail as they do without a network (after making their folder, as the real
    download_url does); returns the URLs asked for. No test downloads anything."""
    import torchvision.datasets.utils

    asked: list[str] = []

    def unreachable(url, root, *args, **kwargs):
        asked.append(url)
        os.makedirs(root, exist_ok=True)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", unreachable)
    return asked


@pytest.mark.parametrize("make", [mnist, cifar])
@pytest.mark.parametrize("download", [True, False])
def test_a_data_folder_that_does_not_exist_is_named_and_not_left_behind(tmp_path, offline, make, download):
    missing = tmp_path / "typo"
    with pytest.raises(UserError) as err:
        make(missing, download=download).prepare_data()
    message = str(err.value)
    assert f"the data folder {missing} does not exist" in message and "point DATA_DIR (or data.data_dir)" in message
    # with downloads on, a user with a network gets the data; here the download fails and its tree is removed
    assert not missing.exists() and bool(offline) == download
    if download:
        assert "the download failed (" in message


def test_a_failed_download_names_folder_files_and_the_whole_reason(tmp_path, offline):
    with pytest.raises(UserError) as err:
        mnist(tmp_path, download=True).prepare_data()
    message = str(err.value)
    assert f"MNIST not found: {tmp_path / 'MNIST' / 'raw'} lacks train-images-idx3-ubyte[.gz]" in message
    # torchvision puts the reason after "Error downloading <file>:" and a line break: all of it, on one line
    assert "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got: <urlopen error [Errno -3] Temporary " in message
    assert "\n" not in message and offline

    with pytest.raises(UserError) as err:
        cifar(tmp_path, download=True).prepare_data()
    message = str(err.value)
    assert f"CIFAR-10 not found: neither the python archive in {tmp_path / 'cifar-10-batches-py'}" in message
    assert "the download failed (URLError: <urlopen error [Errno -3] Temporary failure in name resolution>)" in message


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("broken.png", b"\x89PNG broken", "not a valid PNG image"),
        ("cut.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "it is a damaged or truncated PNG image"),
        ("notes.jpg", b"hello", "not a valid JPEG image"),
        ("photo.png", b"\xff\xd8\xff\xe0 cut", "it is a damaged or truncated JPEG image"),
        ("empty.png", b"", "the file is empty"),
        ("data.xyz", b"hello", "not an image in a format read here (PNG, JPEG, GIF, BMP, TIFF, WebP)"),
    ],
)
def test_undecodable_images_are_one_sentence_without_decoder_internals(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    expected = re.escape(f"cannot decode image {path}: {problem}.") + "$"
    with pytest.raises(UserError, match=expected):
        read_rgb(path)
    with pytest.raises(UserError, match=expected):
        load_rgb(str(path))


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_read_rgb_reads_what_predict_lists(tmp_path, suffix):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / f"image{suffix}")
    assert torch.equal(read_rgb(tmp_path / f"image{suffix}"), torch.from_numpy(pixels).permute(2, 0, 1))


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
    with pytest.raises(UserError, match=f"cannot decode image {broken}: it is a damaged or truncated PNG image"):
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
