"""What the decode cache's checksum costs a cached start: CIFAR-10's 51,000 decoded images read back from the cache
with the check (``DecodedCache.load``) against the same file read by ``torch.load`` alone, alternated over rounds.

    DATA_DIR=../shared/datasets python bench/cache_checksum.py --rounds 5

The first call builds the cache (decoding the PNG export) if it is not there yet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from visiontrain.data.cifar10 import CIFAR10DataModule
from visiontrain.data.in_memory import DecodedCache, checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "visiontrain-bench-cache"))
    args = parser.parse_args()
    data_dir = Path(os.environ.get("DATA_DIR", "data"))
    datamodule = CIFAR10DataModule(
        data_dir=str(data_dir / "no-archive"), png_dir=str(data_dir / "cifar10"), num_classes=10, num_channels=3,
        image_size=32, download=False, cache_dir=args.cache_dir, val_size=5000,
    )  # fmt: skip
    start = time.perf_counter()
    datamodule.setup("fit")
    print(f"set-up (cache {'used' if all(datamodule.cache_used.values()) else 'built'}): "
          f"{time.perf_counter() - start:.2f} s")  # fmt: skip
    files = sorted(Path(args.cache_dir).glob("*.pt"))
    cache = DecodedCache(args.cache_dir)
    plain, checked, hashing = [], [], []
    for _ in range(args.rounds):  # per round, every file: what a cached start reads
        load = check = full = 0.0
        for path in files:
            t0 = time.perf_counter()
            entry = torch.load(path, map_location="cpu", weights_only=True)
            t1 = time.perf_counter()
            checksum(entry["images"], entry["labels"])
            t2 = time.perf_counter()
            assert cache.load(path) is not None
            t3 = time.perf_counter()
            load, check, full = load + t1 - t0, check + t2 - t1, full + t3 - t2
        plain.append(load)
        hashing.append(check)
        checked.append(full)
    images = sum(torch.load(p, weights_only=True)["labels"].numel() for p in files)
    print(f"{images} images in {len(files)} cache files, medians of {args.rounds} rounds:")
    print(
        f"  torch.load alone {statistics.median(plain):.3f} s; the checksum {statistics.median(hashing):.3f} s; "
        f"load with the check {statistics.median(checked):.3f} s"
    )
    print(f"  the check adds {statistics.median(hashing) / statistics.median(plain) * 100:.0f} % to reading the cache")


if __name__ == "__main__":
    main()
