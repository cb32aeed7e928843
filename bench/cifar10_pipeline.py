"""CIFAR-10 input pipelines on the real PNG files, in one run: the tensor-batch pipeline that trains
(``data=cifar10``: decoded uint8 arrays in memory, a whole batch indexed at once, per-image random crop and
flip and normalisation as batch tensor operations after the transfer to the device) against a per-sample PIL
DataLoader with the same augmentation (torchvision ImageFolder: open and decode each PNG, RandomCrop(32,
padding=4), RandomHorizontalFlip, ToTensor, Normalize, collate).

Images per second of the data pipeline alone (no network), batches of ``--batch-size``, ``--batches`` per
round; the pipelines alternate for ``--rounds`` rounds (shared CPUs drift) and the median is printed. Start-up
is timed separately: the tensor pipeline's first start decodes the PNGs and writes the cache (only when
``--cold``: it deletes the cache first), a later start reads the cache; the PIL loader's start lists the files.

    DATA_DIR=/work/shared/datasets python bench/cifar10_pipeline.py [--rounds 3] [--batches 20] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from visiontrain.data.cifar10 import CIFAR10DataModule

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def tensor_module(data_dir: str, cache_dir: str, batch_size: int) -> tuple[CIFAR10DataModule, float]:
    start = time.perf_counter()
    dm = CIFAR10DataModule(
        data_dir=data_dir, num_classes=10, num_channels=3, image_size=32, download=False, val_size=0,
        batch_size=batch_size, crop_padding=4, hflip=True, cache_dir=cache_dir,
    )  # fmt: skip
    dm.setup("fit")
    return dm, time.perf_counter() - start


def tensor_rate(dm: CIFAR10DataModule, batches: int) -> float:
    loader = iter(dm.train_dataloader())
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        images, labels = dm.transfer_batch_to_device(next(loader), torch.device("cpu"), 0)
        images = dm.augment(images, train=True)  # what on_after_batch_transfer does while training
        seen += len(labels)
    assert images.dtype == torch.float32
    return seen / (time.perf_counter() - start)


def pil_loader(data_dir: str, batch_size: int, workers: int) -> tuple[DataLoader, float]:
    start = time.perf_counter()
    dataset = datasets.ImageFolder(
        str(Path(data_dir) / "cifar10" / "train"),
        transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]),
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    return loader, time.perf_counter() - start


def pil_rate(loader: DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        images, labels = next(iterator)
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--cold", action="store_true", help="measure the first start too (a fresh cache dir)")
    args = parser.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="cifar_cache_") if args.cold else os.path.expanduser("~/.cache/visiontrain")
    from cifar10_fast import cpu_name  # noqa: PLC0415 (bench/ is the script's folder)

    print(f"CPU: {cpu_name()}; data {args.data_dir}/cifar10; batch {args.batch_size}")
    if args.cold:
        _, first = tensor_module(args.data_dir, cache_dir, args.batch_size)
        print(f"tensor pipeline, first start (decode 51,000 PNGs, write the cache): {first:.1f} s")
    dm, second = tensor_module(args.data_dir, cache_dir, args.batch_size)
    print(f"tensor pipeline, start from the cache: {second:.1f} s")
    loaders = {w: pil_loader(args.data_dir, args.batch_size, w) for w in args.workers}
    for w, (_, listing) in loaders.items():
        print(f"PIL DataLoader (workers {w}) start (list the files): {listing:.1f} s")
    rates: dict[str, list[float]] = {"tensor batches": []} | {f"PIL, {w} workers": [] for w in args.workers}
    for _ in range(args.rounds):
        rates["tensor batches"].append(tensor_rate(dm, args.batches))
        for w, (loader, _) in loaders.items():
            rates[f"PIL, {w} workers"].append(pil_rate(loader, args.batches))
    tensor = statistics.median(rates["tensor batches"])
    print("| pipeline | images/s (median) | rounds | x PIL |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | {tensor / median:.1f} |")


if __name__ == "__main__":
    main()
