"""Training throughput: visiontrain vs a plain hand-written PyTorch loop, measured in one run (classification).

Same network (simple_cnn), same data (the official MNIST files in $DATA_DIR/MNIST/raw, the same 55,000 training images),
same batch size, optimizer and schedule, same memory format (the one the framework's config gives the network, set
explicitly on both sides; ``--[no-]channels-last`` for another). The plain loop shares only the files and the network
definition (visiontrain.models.simple_cnn) with the framework: it reads the IDX files itself. Each side trains
``--warmup`` + ``--steps`` steps (no validation) and is timed over the ``--steps`` after the warm-up (bench/pairing.py
says what is on the clock); the two alternate for ``--rounds`` rounds, and the median and spread of the per-round ratios
are reported, with the median steps per second of each side. bench/run_all.py runs this beside the other families.

    DATA_DIR=/work/shared/datasets python bench/throughput.py [--rounds 15] [--steps 150] [--batch-size 128]
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairing  # noqa: E402

from visiontrain.models.simple_cnn import SimpleCNN  # noqa: E402

FAMILY = "classification"
DESCRIPTION = "simple_cnn, MNIST 28x28, batch 128, SGD + one-cycle, data in memory"
DEFAULT_STEPS = 150
BATCH_SIZE = 128
# conf/model/simple_cnn.yaml and conf/model/optimizer/sgd.yaml, conf/model/scheduler/onecycle.yaml; conf/data/mnist.yaml
LR, MOMENTUM, WEIGHT_DECAY, PCT_START = 0.05, 0.9, 5e-4, 0.25
# one kernel over all parameters, as conf/model/optimizer/ sets (fused: true)
FUSED = True
MEAN, STD, VAL_SIZE, SPLIT_SEED = 0.1307, 0.3081, 5000, 12345


def data_dir() -> Path:
    return pairing.data_dir("MNIST/raw")


def recipe(root: Path, batch_size: int = BATCH_SIZE) -> list[str]:
    """``python train.py``: simple_cnn on MNIST, the default run."""
    return [f"paths.data_dir={root}", f"data.batch_size={batch_size}"]


def framework_channels_last(root: Path) -> bool | None:
    """The memory format the framework gives the network (``model.channels_last``, ``auto`` resolved)."""
    return pairing.framework_channels_last(recipe(root))


def framework_rate(
    root: Path, steps: int, warmup: int = 1, batch_size: int = BATCH_SIZE, channels_last: bool | None = None
) -> float:
    """The recipe with the benches' quiet settings; ``channels_last`` None: the config's own memory format."""
    return pairing.framework_rate(recipe(root, batch_size), steps, warmup, channels_last)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): the magic number's last byte is the number of dimensions, each a 4-byte size."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (uint8, N x 1 x 28 x 28) and labels, less a seeded 5,000 held out for validation."""
    raw = root / "MNIST" / "raw"

    def find(name: str) -> Path:
        return raw / name if (raw / name).is_file() else raw / f"{name}.gz"

    images = torch.from_numpy(read_idx(find("train-images-idx3-ubyte")).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(find("train-labels-idx1-ubyte")).astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train = order[VAL_SIZE:]
    return images[train], labels[train]


def build_training(total_steps: int, channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    """The network, optimizer and schedule the recipe gives, written out: simple_cnn in the memory format asked,
    SGD (Nesterov, no weight decay on biases and norm weights, fused), one-cycle over ``total_steps`` steps."""
    torch.manual_seed(42)
    net = SimpleCNN(in_channels=1, num_classes=10, image_size=28, width=16)
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        momentum=MOMENTUM,
        nesterov=True,
        weight_decay=WEIGHT_DECAY,
        fused=FUSED,
    )
    # both phases at least one step long, as the config's schedule keeps them (runs of a few steps)
    pct_start = min(max(PCT_START, 2 / total_steps), (total_steps - 1) / total_steps) if total_steps >= 3 else PCT_START
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=total_steps, pct_start=pct_start)
    net.train()
    return net, opt, sched


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int, channels_last: bool):
    """``steps`` normalised training batches: a permutation per epoch, slices of it."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    per_epoch = len(labels) // batch_size
    for step in range(steps):
        i = step % per_epoch
        if i == 0:
            order = torch.randperm(len(labels))
        idx = order[i * batch_size : (i + 1) * batch_size]
        x = ((images[idx].float() / 255 - MEAN) / STD).contiguous(memory_format=memory_format)
        yield x, labels[idx]


def plain_clock(
    root: Path, steps: int, warmup: int = 1, batch_size: int = BATCH_SIZE, channels_last: bool = False, timer=None
) -> pairing.StepClock:
    """What one writes by hand: tensors in memory, a permutation per epoch, slice, normalise, step, and the
    running loss and accuracy one prints at the end of an epoch (visiontrain logs both)."""
    images, labels = load_mnist(root)
    total = warmup + steps
    net, opt, sched = build_training(total, channels_last)
    clock = pairing.StepClock(warmup, timer)
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for x, y in batches(images, labels, batch_size, total, channels_last):
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == y).sum()
        clock.tick()
    assert torch.isfinite(loss_sum) and correct > 0
    return clock


def plain_rate(
    root: Path, steps: int, warmup: int = 1, batch_size: int = BATCH_SIZE, channels_last: bool = False
) -> float:
    return plain_clock(root, steps, warmup, batch_size, channels_last).rate()


if __name__ == "__main__":
    pairing.family_main(sys.modules[__name__], default_rounds=15)
