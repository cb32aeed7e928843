"""Training throughput: visiontrain vs a plain hand-written PyTorch loop, measured in one run.

Same network (simple_cnn), same data (the official MNIST files in $DATA_DIR/MNIST/raw), same batch
size, optimizer and schedule. Each side trains one epoch of ``--steps`` steps (no validation); the two
alternate for ``--rounds`` rounds. Shared CPUs drift by +-15% from one second to the next, so the
ratio is taken within each round (two runs seconds apart) and the median of those ratios is
reported, with the median steps per second of each side.

    python bench/throughput.py [--rounds 15] [--steps 150] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import Callback

from visiontrain.data.mnist import MNISTDataModule
from visiontrain.models.simple_cnn import SimpleCNN


class EpochTimer(Callback):
    """Steps per second of each training epoch, as the Trainer runs it."""

    rates: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.start_step = time.perf_counter(), trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        EpochTimer.rates.append((trainer.global_step - self.start_step) / (time.perf_counter() - self.start))


def data_dir() -> Path:
    root = Path(os.environ.get("DATA_DIR", "data"))
    if not (root / "MNIST" / "raw").is_dir():
        raise SystemExit(f"error: no MNIST in {root}/MNIST/raw; set DATA_DIR to a folder holding MNIST/raw/.")
    return root


def visiontrain_rate(root: Path, batch_size: int, steps: int) -> float:
    from visiontrain.cli.train import train
    from visiontrain.runs.config import compose_config

    overrides = [
        f"paths.data_dir={root}",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "test=false",
        "extras.print_config=false",
        "logger=none",
        # nothing that writes output, on either side: no progress bar, checkpoints or loggers
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
        f"data.batch_size={batch_size}",
        f"trainer.limit_train_batches={steps}",
        "+callbacks.timer._target_=__main__.EpochTimer",
    ]
    cfg = compose_config("train", overrides, Path(tempfile.mkdtemp()))
    train(cfg)
    return EpochTimer.rates[-1]


def plain_rate(root: Path, batch_size: int, steps: int) -> float:
    """What one writes by hand: tensors in memory, a permutation, slice, normalise, step, and the
    running loss and accuracy one prints at the end of an epoch (visiontrain logs both)."""
    dm = MNISTDataModule(str(root), num_classes=10, num_channels=1, image_size=28, download=False)
    dm.setup("fit")
    images, labels = dm.train_set.images, dm.train_set.labels
    torch.manual_seed(42)
    net = SimpleCNN(in_channels=1, num_classes=10, image_size=28, width=16)
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps, pct_start=0.25)
    net.train()
    start = time.perf_counter()
    order = torch.randperm(len(labels))
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for i in range(steps):
        idx = order[i * batch_size : (i + 1) * batch_size]
        x, y = (images[idx].float() / 255 - 0.1307) / 0.3081, labels[idx]
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == y).sum()
    elapsed = time.perf_counter() - start
    assert torch.isfinite(loss_sum) and correct > 0
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    root = data_dir()
    plain, ours = [], []
    for _ in range(args.rounds):  # alternate, so both sides see the same machine conditions
        plain.append(plain_rate(root, args.batch_size, args.steps))
        ours.append(visiontrain_rate(root, args.batch_size, args.steps))
    print(
        f"data: {root}  batch size: {args.batch_size}  steps per round: {args.steps}  rounds: {args.rounds}  "
        f"threads: {torch.get_num_threads()}"
    )
    for name, rates in (("plain PyTorch loop", plain), ("visiontrain", ours)):
        listed = ", ".join(f"{r:.1f}" for r in rates)
        print(f"{name:18s}: {statistics.median(rates):6.1f} steps/s median  (rounds: {listed})")
    ratios = [o / p for o, p in zip(ours, plain)]
    print(
        f"ratio visiontrain / plain: {statistics.median(ratios):.3f} median of rounds "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
