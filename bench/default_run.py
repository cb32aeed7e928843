"""Wall time and test accuracy of the default command, ``python train.py``, start-up included.

DATA_DIR=<folder with MNIST/raw> python bench/default_run.py [extra overrides ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    workdir = Path(tempfile.mkdtemp())
    command = [sys.executable, str(PROJECT / "train.py"), *sys.argv[1:]]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    (metrics_file,) = workdir.glob("outputs/train/runs/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    print(f"command: python train.py {' '.join(sys.argv[1:])}")
    print(f"wall time: {wall:.1f} s (start-up, 3 epochs, validation, test)")
    print(f"test/acc (official 10k MNIST test set): {metrics['test/acc']:.4f}")


if __name__ == "__main__":
    main()
