"""What a training step costs beside the network: the same classification steps run three ways, at a batch small
enough that the loop's own work shows.

- plain: bench/throughput.py's hand-written loop (tensors in memory, slice, normalise, forward, backward, fused SGD,
  one-cycle step, running loss and accuracy);
- Lightning: the same network, optimizer, schedule and batches in a bare ``LightningModule`` (nothing of visiontrain)
  run by a ``Trainer`` with no logger, checkpointing, progress bar or summary: Lightning's automatic-optimisation
  loop, its hooks and its closure, and nothing else;
- visiontrain: ``train.py``'s default recipe (simple_cnn on MNIST) with the benches' quiet settings
  (bench/pairing.py's QUIET_RUN), at the same batch size and memory format.

Each run's figure is its median step time in CPU time of the process (``time.process_time``, one torch thread by
default: a step descheduled by another process does not count), the three alternate for ``--rounds`` paired rounds,
and the per-round differences say what each layer adds: Lightning - plain is Lightning's own loop, visiontrain -
Lightning is what visiontrain adds on top (its data module, metrics, callbacks, hooks).

    DATA_DIR=/work/shared/datasets python bench/step_overhead.py [--batch-size 2] [--steps 500] [--rounds 7]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairing  # noqa: E402
import throughput  # noqa: E402

TIMER = time.process_time


class Batches:
    """The batches, made before the clock starts, as the iterable Lightning takes for a dataloader (a list or a
    tuple would be read as several dataloaders)."""

    def __init__(self, batches) -> None:
        self.batches = list(batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BareModule(L.LightningModule):
    """bench/throughput.py's network, optimizer and schedule, and the step's loss, in the least Lightning needs."""

    def __init__(self, total_steps: int, channels_last: bool, clock: pairing.StepClock) -> None:
        super().__init__()
        self.net, self.opt, self.sched = throughput.build_training(total_steps, channels_last)
        self.clock = clock

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.clock.tick()

    def configure_optimizers(self):
        return {"optimizer": self.opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}


def lightning_clock(root: Path, steps: int, warmup: int, batch_size: int, channels_last: bool) -> pairing.StepClock:
    images, labels = throughput.load_mnist(root)
    total = warmup + steps
    clock = pairing.StepClock(warmup, TIMER)
    trainer = L.Trainer(
        max_steps=total,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batches = Batches(throughput.batches(images, labels, batch_size, total, channels_last))
    trainer.fit(BareModule(total, channels_last, clock), train_dataloaders=batches)
    return clock


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=500, help="timed steps per run, after the warm-up")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: CPU time is wall)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # Lightning's per-run banner, not ours
    root = throughput.data_dir()
    nhwc = bool(throughput.framework_channels_last(root))
    shape = (args.steps, args.warmup, args.batch_size, nhwc)
    overrides = throughput.recipe(root, args.batch_size)
    sides = {
        "plain": lambda: throughput.plain_clock(root, *shape, timer=TIMER).median_step(),
        "Lightning": lambda: lightning_clock(root, *shape).median_step(),
        "visiontrain": lambda: pairing.framework_clock(
            overrides, args.steps, args.warmup, nhwc, timer=TIMER
        ).median_step(),
    }
    steps = pairing.paired_rounds(sides, args.rounds, progress=lambda line: print(line, "s per step", flush=True))
    ms = {name: [t * 1e3 for t in times] for name, times in steps.items()}
    rows = [[name, f"{statistics.median(times):.3f}", "", "", ""] for name, times in ms.items()]
    for row, (layer, below) in zip(rows[1:], (("Lightning", "plain"), ("visiontrain", "Lightning"))):
        added = [a - b for a, b in zip(ms[layer], ms[below])]
        row[2:] = [f"{statistics.median(added):+.3f}", pairing.value_range(added, 3), pairing.interquartile(added, 3)]
    print(pairing.machine_line())
    print(
        f"simple_cnn on MNIST, batch {args.batch_size}, {'NHWC' if nhwc else 'NCHW'}, {args.rounds} rounds x "
        f"{args.steps} steps, CPU time per step (median of each run)"
    )
    columns = ["side", "ms per step (median)", "added to the row above (median)", "added min–max", "added IQR"]
    print(pairing.text_table(columns, rows))
    return ms


if __name__ == "__main__":
    main()
