"""Writers for small datasets in the REAL on-disk formats (IDX, CIFAR python pickles, PNG trees).

Images are learnable: each class is a bright square at its own position on a noisy background,
so short training runs reach high accuracy and tests can assert numbers, not only that code ran.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_images(n: int, size: int, channels: int, num_classes: int = 10, seed: int = 0):
    """``n`` uint8 images (n, size, size, channels) and labels; class k lights a square at its own spot."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    cell = size // 4
    for i, label in enumerate(labels):
        r, c = divmod(int(label) % 16, 4)
        images[i, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell, :] = 200 + rng.integers(0, 55)
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if compress else path
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist(root: Path, n_train: int = 600, n_test: int = 200, compress: bool = True) -> Path:
    """``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, as the official files."""
    raw = root / "MNIST" / "raw"
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = class_images(n, 28, 1, seed=seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[..., 0], compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


def cifar_splits(n_train: int = 500, n_test: int = 100):
    return class_images(n_train, 32, 3, seed=3), class_images(n_test, 32, 3, seed=4)


def write_cifar_archive(root: Path, n_train: int = 500, n_test: int = 100) -> Path:
    """``root/cifar-10-batches-py/``: five data batches, test_batch and batches.meta, pickled like the original."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (train_x, train_y), (test_x, test_y) = cifar_splits(n_train, n_test)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        entry = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),  # row = R plane, G plane, B plane
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for i, (images, labels) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), start=1):
        dump(f"data_batch_{i}", images, labels)
    dump("test_batch", test_x, test_y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, f, protocol=2)
    return root


def write_image_tree(split_dir: Path, images: np.ndarray, labels: np.ndarray, class_names, suffix=".png") -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = split_dir / class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.squeeze()).save(folder / f"{i:05d}{suffix}")


def write_cifar_png(root: Path, n_train: int = 500, n_test: int = 100) -> Path:
    """The cifar2png layout: ``root/{train,test}/<class name>/<n>.png`` (same images as the archive)."""
    (train_x, train_y), (test_x, test_y) = cifar_splits(n_train, n_test)
    write_image_tree(root / "train", train_x, train_y, CIFAR10_CLASSES)
    write_image_tree(root / "test", test_x, test_y, CIFAR10_CLASSES)
    return root


def write_imagefolder(root: Path, num_classes: int = 3, per_class: int = 12, size: int = 40, val: bool = True) -> Path:
    """``root/{train,val,test}/<class>/*.jpg`` with ``num_classes`` classes."""
    names = [f"class_{k}" for k in range(num_classes)]
    splits = {"train": per_class * num_classes, "test": 4 * num_classes}
    if val:
        splits["val"] = 4 * num_classes
    for seed, (split, n) in enumerate(splits.items()):
        images, labels = class_images(n, size, 3, num_classes=num_classes, seed=10 + seed)
        write_image_tree(root / split, images, labels, names, suffix=".jpg")
    return root
