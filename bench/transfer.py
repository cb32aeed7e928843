"""Transfer learning measured on the shared data (README "Measured figures"): every arm run with several
seeds, each run's wall time (start-up included) and its test metric on the official test split.

    DATA_DIR=<folder with PennFudanPed/ and oxford-iiit-pet/> python bench/transfer.py [--seeds 1 2 3] [--arms ...]

The segmentation recipes alone, with their experiments' seed (42):
``python bench/transfer.py --arms pennfudan_unet pet_unet --seeds 42``.

Runs go to outputs/bench/transfer/outputs/<task_name>/runs/. The arms run in the order below: a transfer
arm starts from the best checkpoint of the newest run of its source (``${best_checkpoint:...}``), so the
sources run first (pennfudan_unet once, with its experiment's seed; pet_unet's last seed is the source
of breeds_from_pet_seg).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
WORKDIR = PROJECT / "outputs" / "bench" / "transfer"
BREEDS = ["experiment=pet_breeds_resnet18"]
SECONDARY = ("test/pixel_acc", "test/dice")  # printed beside a segmentation run's mIoU

# name -> (overrides, metric, seeded); "seeded": run once per --seeds value, else once as configured
ARMS: dict[str, tuple[list[str], str, bool]] = {
    # segmentation: UNet (ResNet-18 encoder), 96 px, 25 epochs
    "pennfudan_unet": (["experiment=pennfudan_unet"], "test/miou", False),
    "pet_unet": (["experiment=pet_unet"], "test/miou", True),
    "pet_transfer": (["experiment=pet_transfer"], "test/miou", True),
    "pet_transfer_staged": (
        ["experiment=pet_transfer", "finetune=staged", "finetune.unfreeze_at_epoch=5", "task_name=pet_transfer_staged"],
        "test/miou",
        True,
    ),
    # classification of the 3 breeds: ResNet-18, 128 px, 40 epochs
    "breeds_scratch": (BREEDS, "test/acc", True),
    "breeds_trivialaugment": (
        [*BREEDS, "data.augment=trivialaugment", "task_name=pet_breeds_trivialaugment"],
        "test/acc",
        True,
    ),
    "breeds_from_pennfudan": (
        [*BREEDS, "init_from=${best_checkpoint:pennfudan_unet}", "task_name=pet_breeds_from_pennfudan"],
        "test/acc",
        True,
    ),
    "breeds_from_pet_seg": (
        [*BREEDS, "init_from=${best_checkpoint:pet_unet}", "task_name=pet_breeds_from_pet_seg"],
        "test/acc",
        True,
    ),
    "breeds_from_pet_seg_staged": (
        [*BREEDS, "init_from=${best_checkpoint:pet_unet}", "finetune=staged", "finetune.unfreeze_at_epoch=5"]
        + ["task_name=pet_breeds_from_pet_seg_staged"],
        "test/acc",
        True,
    ),
}


def run(overrides: list[str]) -> tuple[dict[str, float], float]:
    command = [sys.executable, str(PROJECT / "train.py"), *overrides]
    command += ["extras.print_config=false", "callbacks.progress_bar=null"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=WORKDIR, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"python train.py {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    marker = "final metrics written to "
    (line,) = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if marker in line][-1:]
    metrics_file = line.split(marker, 1)[1].strip()
    return json.loads(Path(metrics_file).read_text()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = parser.parse_args()
    if os.environ.get("DATA_DIR"):  # the runs' working directory is WORKDIR
        os.environ["DATA_DIR"] = str(Path(os.environ["DATA_DIR"]).resolve())
    WORKDIR.mkdir(parents=True, exist_ok=True)

    summary = []
    for name in args.arms:
        overrides, metric, seeded = ARMS[name]
        values, walls = [], []
        for seed in args.seeds if seeded else [None]:
            metrics, wall = run(overrides + ([f"seed={seed}"] if seed is not None else []))
            values.append(metrics[metric])
            walls.append(wall)
            figures = ", ".join(f"{key} {metrics[key]:.4f}" for key in (metric, *SECONDARY) if key in metrics)
            print(f"{name} seed={seed or 'config'}: {figures}, wall {wall:.0f} s", flush=True)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append((name, metric, statistics.mean(values), spread, values, statistics.mean(walls)))

    print("\narm | metric | mean ± std over seeds | per seed | mean wall time")
    for name, metric, mean, spread, values, wall in summary:
        per_seed = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name} | {metric} | {mean:.3f} ± {spread:.3f} | {per_seed} | {wall:.0f} s")


if __name__ == "__main__":
    main()
