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


# --- segmentation layouts ------------------------------------------------------------------------
SHAPE_COLORS = ((220, 40, 40), (40, 200, 60), (50, 80, 230))


def shapes_scene(height: int, width: int, num_classes: int, seed: int):
    """Noise with a rectangle and an ellipse of class colours; returns (RGB uint8, class mask uint8)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 70, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for k in range(2):
        cls = int(rng.integers(1, num_classes))
        h, w = int(rng.integers(height // 4, height // 2)), int(rng.integers(width // 4, width // 2))
        top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        if k == 0:
            region = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
        else:
            cy, cx = top + h / 2, left + w / 2
            region = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        image[region] = SHAPE_COLORS[(cls - 1) % len(SHAPE_COLORS)]
        mask[region] = cls
    return image, mask


def save_palette_png(path: Path, mask: np.ndarray) -> None:
    """An index PNG with a palette, like VOC's SegmentationClass files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 252
    image.putpalette(palette)
    image.save(path)


def write_pennfudan(root: Path, n: int = 20, size=(60, 80)) -> Path:
    """``root/PNGImages/FudanPed000NN.png`` + ``root/PedMasks/..._mask.png`` (instance ids 1..k)."""
    for i in range(n):
        image, mask = shapes_scene(*size, num_classes=3, seed=100 + i)
        instances = np.zeros_like(mask)
        instances[mask == 1] = 1
        instances[mask == 2] = 2  # two pedestrians: both are "person" for semantic segmentation
        (root / "PNGImages").mkdir(parents=True, exist_ok=True)
        (root / "PedMasks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "PNGImages" / f"FudanPed{i:05d}.png")
        Image.fromarray(instances, mode="L").save(root / "PedMasks" / f"FudanPed{i:05d}_mask.png")
    return root


def write_oxford_pet(root: Path, n_trainval: int = 16, n_test: int = 6, size=(56, 72)) -> Path:
    """``root/images/*.jpg``, ``root/annotations/trimaps/*.png`` (1 pet, 2 background, 3 border), split files."""
    lines = {"trainval.txt": [], "test.txt": []}
    for i in range(n_trainval + n_test):
        name = f"Abyssinian_{i + 1}"
        image, mask = shapes_scene(*size, num_classes=2, seed=200 + i)
        trimap = np.where(mask > 0, 1, 2).astype(np.uint8)
        edge = (mask > 0) & ~np.pad(mask > 0, 1)[2:, 1:-1]  # bottom edge of the pet: "not classified"
        trimap[edge] = 3
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
        save_palette_png(root / "annotations" / "trimaps" / f"{name}.png", trimap)
        lines["trainval.txt" if i < n_trainval else "test.txt"].append(f"{name} 1 1 1")
    for file, entries in lines.items():
        (root / "annotations" / file).write_text("\n".join(entries) + "\n")
    return root


def write_voc(root: Path, n_train: int = 12, n_val: int = 6, size=(50, 70)) -> Path:
    """``root/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`` with 255 (void) borders."""
    names = {"train.txt": [], "val.txt": []}
    for i in range(n_train + n_val):
        name = f"2007_{i:06d}"
        image, mask = shapes_scene(*size, num_classes=21, seed=300 + i)
        mask[0, :] = 255
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        save_palette_png(root / "SegmentationClass" / f"{name}.png", mask)
        names["train.txt" if i < n_train else "val.txt"].append(name)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    for file, entries in names.items():
        (sets / file).write_text("\n".join(entries) + "\n")
    return root


def write_mask_folder(root: Path, n: int = 20, size=(48, 64), num_classes: int = 3, split_folders: bool = False):
    """``root/images/*.png`` + ``root/masks/*.png`` (or the same under train/val/test/)."""
    for i in range(n):
        image, mask = shapes_scene(*size, num_classes=num_classes, seed=400 + i)
        base = root / ("train" if i < n * 0.6 else "val" if i < n * 0.8 else "test") if split_folders else root
        (base / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(base / "images" / f"scene_{i:03d}.png")
        save_palette_png(base / "masks" / f"scene_{i:03d}.png", mask)
    return root


PET_BREEDS = (("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 6, 1))  # name, CLASS-ID, SPECIES


def write_oxford_pet_breeds(root: Path, n_trainval: int = 6, n_test: int = 3, size: int = 40) -> Path:
    """``root/images/<Breed>_<n>.jpg`` and the official ``annotations/{trainval,test}.txt`` lines
    (``Image CLASS-ID SPECIES BREED-ID``) for three breeds with non-contiguous CLASS-IDs, as in the shared subset."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    lines = {"trainval.txt": [], "test.txt": []}
    for k, (breed, class_id, species) in enumerate(PET_BREEDS):
        images, _ = class_images(n_trainval + n_test, size, 3, num_classes=1, seed=300 + k)
        for i, image in enumerate(images):
            image[:, : size // 4 * (k + 1)] = 220  # each breed: a bright band of its own width
            name = f"{breed}_{i + 1}"
            Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
            lines["trainval.txt" if i < n_trainval else "test.txt"].append(f"{name} {class_id} {species} {k + 1}")
    for file, entries in lines.items():
        (root / "annotations" / file).write_text("\n".join(entries) + "\n")
    return root
