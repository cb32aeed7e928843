"""Label issues found from out-of-fold predictions, measured against known label errors.

A copy of MNIST (the real IDX files from DATA_DIR) with a seeded 2 % of its 60,000 training labels flipped to
another class is written to a temporary data folder; a 5-fold sweep of the default model trains on it
(python train.py -m data.folds=5 data.fold=0,1,2,3,4, the default recipe otherwise); its end runs label issues
(visiontrain.sweeps.label_issues). Printed: precision and recall of the flagged set against the flipped labels,
the sweep's wall time and the time label issues added.

    DATA_DIR=../shared/datasets python bench/label_issues.py [--share 0.02] [--seed 0] [--out /tmp/label_issues]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def flipped_copy(source: Path, target: Path, share: float, seed: int) -> np.ndarray:
    """MNIST's raw files copied into ``target``/MNIST/raw with ``share`` of the training labels changed; returns
    the indices changed."""
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(source / "MNIST" / "raw" / name, raw / name)
    with gzip.open(source / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", "rb") as f:
        data = bytearray(f.read())
    labels = np.frombuffer(bytes(data[8:]), dtype=np.uint8).copy()
    rng = np.random.default_rng(seed)
    changed = np.sort(rng.choice(len(labels), size=round(share * len(labels)), replace=False))
    labels[changed] = (labels[changed] + rng.integers(1, 10, size=len(changed))) % 10  # always another class
    with gzip.open(raw / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(data[:8]) + labels.tobytes())
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/label_issues_bench"))
    args = parser.parse_args()
    source = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "datasets"))
    shutil.rmtree(args.out, ignore_errors=True)
    changed = flipped_copy(source, args.out / "data", args.share, args.seed)
    sweep = args.out / "sweep"
    folds = ",".join(str(k) for k in range(args.folds))
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"data.folds={args.folds}", f"data.fold={folds}",
               f"hydra.sweep.dir={sweep}", "logger=csv", "extras.print_config=false"]  # fmt: skip
    env = {**os.environ, "DATA_DIR": str(args.out / "data"), "XDG_CACHE_HOME": str(args.out / "cache")}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=args.out)
    sweep_seconds = time.perf_counter() - start

    sys.path.insert(0, str(ROOT / "src"))
    from visiontrain.sweeps import label_issues

    start = time.perf_counter()
    line = label_issues.write(sweep)  # again, timed alone (the sweep's end ran it once already)
    issue_seconds = time.perf_counter() - start
    with (sweep / label_issues.CSV_NAME).open() as f:
        flagged = {int(row["image"].removeprefix("train#")) for row in csv.DictReader(f)}
    truth = set(changed.tolist())
    hits = len(flagged & truth)
    print(line)
    print(f"flipped {len(truth)} of 60000 training labels ({args.share:.1%}, seed {args.seed}); flagged {len(flagged)}")
    print(f"precision {hits / max(len(flagged), 1):.3f}  recall {hits / len(truth):.3f}")
    print(f"sweep of {args.folds} folds {sweep_seconds:.0f} s wall; label issues {issue_seconds:.1f} s")


if __name__ == "__main__":
    main()
