"""Test mAP and wall time of the from-scratch detection recipe on the real Penn-Fudan data, start-up included.

DATA_DIR=<folder with PennFudanPed> python bench/detection_scratch.py [extra overrides ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RECIPE = ["experiment=pennfudan_fasterrcnn_scratch", "callbacks.progress_bar=null", "extras.print_config=false"]


def main() -> None:
    workdir = Path(tempfile.mkdtemp())
    command = [sys.executable, str(PROJECT / "train.py"), *RECIPE, *sys.argv[1:]]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    (metrics_file,) = workdir.glob("outputs/train/runs/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    print(f"command: python train.py {' '.join(RECIPE + sys.argv[1:])}")
    print(f"wall time: {wall:.1f} s (start-up, training, validation, test)")
    for name in ("test/map", "test/map_50", "test/map_75", "val/map_best"):
        print(f"{name} (PennFudan, 50 test images): {metrics[name]:.4f}")


if __name__ == "__main__":
    main()
