"""ResNet-18 (CIFAR stem) on the real CIFAR-10 images on this machine: training images/s of the headline command
``python train.py model=resnet data=cifar10``, and whether ``model.compile=true`` or
``trainer.precision=bf16-mixed`` help on the CPU.

Each variant trains ``--steps`` batches of the first epoch through the framework (no validation, no test); the
first ``--warmup`` steps (oneDNN set-up; torch.compile's compilation) are timed apart. The epoch time is
extrapolated from the steady steps' rate to the 45,000 training images of one epoch (data.val_size=5000): it is
an extrapolation from a fraction of an epoch, not a measured epoch.

    DATA_DIR=/work/shared/datasets python bench/cifar10_resnet18.py [--steps 8] [--warmup 2] [--batch-size 256] \
        [--variants eager channels_last compile channels_last+compile bf16 channels_last+bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lightning import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_fast import cpu_name  # noqa: E402

from visiontrain.cli.train import train  # noqa: E402
from visiontrain.runs.config import compose_config  # noqa: E402

VARIANTS = {
    "eager": ["model.channels_last=false"],
    "channels_last": ["model.channels_last=true"],
    "compile": ["model.channels_last=false", "model.compile=true"],
    "channels_last+compile": ["model.channels_last=true", "model.compile=true"],
    "bf16": ["model.channels_last=false", "trainer.precision=bf16-mixed"],
    "channels_last+bf16": ["model.channels_last=true", "trainer.precision=bf16-mixed"],
}


class StepTimer(Callback):
    times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        StepTimer.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}")
    rows = []
    for name in args.variants:
        overrides = [
            "model=resnet", "data=cifar10", f"paths.data_dir={args.data_dir}", "data.download=false",
            f"data.batch_size={args.batch_size}", "trainer.accelerator=cpu", "trainer.max_epochs=1",
            f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
            "test=false", "logger=none", "extras.print_config=false", "callbacks.progress_bar=null",
            "callbacks.model_summary=null", "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null",
            "+trainer.enable_progress_bar=false", "+callbacks.step_timer._target_=__main__.StepTimer", *VARIANTS[name],
        ]  # fmt: skip
        cfg = compose_config("train", overrides, Path(tempfile.mkdtemp(prefix="resnet18_")))
        StepTimer.times = []
        start = time.perf_counter()
        train(cfg)
        total = time.perf_counter() - start
        warm, steady = StepTimer.times[: args.warmup], StepTimer.times[args.warmup :]
        rate = args.batch_size / statistics.median(steady)
        rows.append((name, rate, 45000 / rate / 60, sum(warm), total))
        print(f"{name}: {rate:.1f} img/s; warm-up steps {', '.join(f'{t:.1f}' for t in warm)} s; "
              f"steady steps {', '.join(f'{t:.1f}' for t in steady)} s; run {total:.0f} s", flush=True)  # fmt: skip
    print(f"\nResNet-18 (CIFAR stem), batch {args.batch_size}, real CIFAR-10 images; CPU: {cpu_name()}")
    print("| variant | training images/s | one epoch of 45,000 (extrapolated) | first steps (s) | run (s) |")
    print("|---|---|---|---|---|")
    for name, rate, minutes, warm, total in rows:
        print(f"| {name} | {rate:.1f} | {minutes:.0f} min | {warm:.0f} | {total:.0f} |")


if __name__ == "__main__":
    main()
