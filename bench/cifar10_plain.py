"""The fast CIFAR-10 recipe (experiment=cifar10_fast) as a plain hand-written PyTorch loop: the anchor of
bench/cifar10_fast.py. It shares only the data (the decoded CIFAR-10 images, read by CIFAR10DataModule)
and the network definition (visiontrain.models.airbench) with the framework; the batching, augmentation,
normalisation, optimizer groups, schedule, lookahead, label smoothing, whitening set-up and flip
test-time augmentation are written out below. tests/test_cifar10.py checks that nothing else is imported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from visiontrain.data.cifar10 import CIFAR10DataModule
from visiontrain.models.airbench import AirbenchNet

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1) * 255
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1) * 255


def load_data(data_dir: str, cache_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 train images (all 50,000) and labels, uint8 test images and labels."""
    dm = CIFAR10DataModule(
        data_dir=data_dir, num_classes=10, num_channels=3, image_size=32, download=False, val_size=0,
        cache_dir=cache_dir,
    )  # fmt: skip
    dm.setup("fit")
    return dm.train_set.images, dm.train_set.labels, dm.test_set.images, dm.test_set.labels


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() - MEAN) / STD


def augment(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop of the zero-padded image and a random horizontal flip, drawn per image."""
    n = len(images)
    padded = F.pad(images, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n))
    out = torch.empty_like(images)
    for y in range(2 * padding + 1):  # one slice per offset pair: (2p+1)^2 gathers instead of N
        for x in range(2 * padding + 1):
            chosen = ((dy == y) & (dx == x)).nonzero().flatten()
            if len(chosen):
                out[chosen] = padded[chosen, :, y : y + 32, x : x + 32]
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def evaluate(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy with flip test-time augmentation (mean logits of the image and its mirror image)."""
    net.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = normalise(images[i : i + batch_size])
        logits = net(x) + net(x.flip(-1))
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    net.train()
    return correct / len(labels)


def train(
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    epochs: int = 10,
    batch_size: int = 1024,
    widths: tuple[int, int, int] = (64, 256, 256),
    lr: float = 1.5,
    momentum: float = 0.85,
    weight_decay: float = 0.0013305,
    bias_lr_scale: float = 64.0,
    label_smoothing: float = 0.2,
    crop_padding: int = 2,
    lookahead_every: int = 5,
    seed: int = 42,
    channels_last: bool = False,
    bf16: bool = False,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """airbench94's training, as experiment=cifar10_fast configures it. ``on_epoch(epoch, net)`` is called
    after each epoch (the caller evaluates there, off its clock)."""
    train_x, train_y, _, _ = data
    torch.manual_seed(seed)
    net = AirbenchNet(num_classes=10, widths=widths)
    net.init_from_batch(normalise(train_x[torch.randperm(len(train_y))[:5000]]))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)

    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        [
            {"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "lr": lr * bias_lr_scale,
             "weight_decay": weight_decay / bias_lr_scale},
        ],
        momentum=momentum,
        nesterov=True,
    )  # fmt: skip
    steps_per_epoch = len(train_y) // batch_size
    total = epochs * steps_per_epoch
    warmup = 0.23 * total

    def triangle(step: int) -> float:  # 0.2 -> 1 over 23% of the steps, then -> 0.07
        if step < warmup:
            return 0.2 + 0.8 * step / warmup
        return 1.0 - 0.93 * min(1.0, (step - warmup) / (total - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, triangle)
    slow = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    step = 0
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_y))
        for i in range(steps_per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            x, y = normalise(augment(train_x[index], crop_padding)), train_y[index]
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % lookahead_every == 0 or step == total:  # lookahead, its weight rising as (step/total)^3
                decay = 0.95**lookahead_every * (step / total) ** 3
                with torch.no_grad():
                    for name, fast in net.state_dict().items():
                        if name in slow:
                            if step % lookahead_every == 0:
                                slow[name].lerp_(fast, 1 - decay)
                            fast.copy_(slow[name])
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the loss is {loss.item()} at epoch {epoch + 1}")
        if on_epoch is not None:
            on_epoch(epoch + 1, net)
    return net


if __name__ == "__main__":
    import os

    data = load_data(os.environ.get("DATA_DIR", "data"), "~/.cache/visiontrain")
    start = time.perf_counter()
    train(data, epochs=1, on_epoch=lambda e, n: print(e, time.perf_counter() - start, evaluate(n, *data[2:])))
