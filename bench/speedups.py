"""Training speed-ups on this CPU, plain PyTorch loops only, on synthetic tensors: for each model family, training
images per second of the baseline (fp32, NCHW, eager) and of each of ``channels_last`` (the model and its inputs in
NHWC), ``compile`` (``torch.compile``, CPU inductor) and ``bf16`` (``torch.autocast("cpu", dtype=torch.bfloat16)``),
as a ratio to the baseline.

The inputs are random tensors of the family's shapes (this measures the network, its backward and the optimizer
step, not data loading). Every variant of a family is built once, from the same seed, and warmed up (timed apart:
for ``compile`` that is the compilation, its first two steps); then in each of ``--rounds`` rounds every variant
trains the same number of steps (chosen so the baseline's take about ``--seconds``), the variants' order rotating
from round to round, and each variant's ratio is taken to the baseline of the same round. A variant whose timed
steps take longer than ``--slow`` seconds (bf16 without bf16 instructions can be 10x slower) is timed in the first
round only. A variant that fails on this machine (e.g. no C compiler for inductor) is reported as ``failed:
<reason>``. Faster R-CNN: ``channels_last`` converts the weights only (the detector batches its images itself),
``compile`` compiles the backbone (the RPN and RoI heads' data-dependent shapes would recompile every step).

    python bench/speedups.py [--rounds 3] [--seconds 1.5] [--families simple_cnn resnet18 unet fasterrcnn]
        [--variants baseline channels_last compile bf16]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairing  # noqa: E402

VARIANTS = ("baseline", "channels_last", "compile", "bf16")
COMPILE_WARMUP_STEPS = 2


@dataclass
class Family:
    name: str
    shape: str  # what one step trains on, said in the table
    images: int  # images per step
    build: Callable[[], nn.Module]
    batch: Callable[[], tuple]
    loss: Callable[[nn.Module, tuple], torch.Tensor]
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    compiled_part: str | None = None  # compile this submodule only (None: the whole model)
    nhwc_inputs: bool = True  # the inputs can be made channels_last (4-D tensors)


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


def classify(model: nn.Module, batch: tuple) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images).float(), labels)


def detect(model: nn.Module, batch: tuple) -> torch.Tensor:
    images, targets = batch
    return sum(loss.float() for loss in model(images, targets).values())


def simple_cnn() -> nn.Module:
    from visiontrain.models.simple_cnn import SimpleCNN

    return SimpleCNN(in_channels=1, num_classes=10, image_size=28)


def resnet18() -> nn.Module:
    from visiontrain.models.resnet import build_resnet

    return build_resnet(18, num_classes=10, cifar_stem=True)


def unet() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=2)


def fasterrcnn() -> nn.Module:
    from throughput_detection import build_model

    return build_model()


def detection_batch() -> tuple:
    """Two PennFudan-sized pictures (300 x 400), two pedestrians each."""
    images = [torch.rand(3, 300, 400) for _ in range(2)]
    boxes = torch.tensor([[40.0, 60.0, 110.0, 280.0], [220.0, 50.0, 300.0, 290.0]])
    targets = [{"boxes": boxes.clone(), "labels": torch.ones(2, dtype=torch.int64)} for _ in images]
    return images, targets


FAMILIES = {
    "simple_cnn": Family(
        "simple_cnn", "1x28x28 (MNIST), batch 128", 128, simple_cnn,
        lambda: (torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))), classify, sgd,
    ),
    "resnet18": Family(
        "resnet18", "CIFAR stem, 3x32x32, batch 128", 128, resnet18,
        lambda: (torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))), classify, sgd,
    ),
    "unet": Family(
        "unet", "smp UNet resnet18, 3x256x256, batch 4", 4, unet,
        lambda: (torch.randn(4, 3, 256, 256), torch.randint(0, 2, (4, 256, 256))), classify, adamw,
    ),
    "fasterrcnn": Family(
        "fasterrcnn", "mobilenet_v3_large_320_fpn, 2 images 300x400 (resized to 320 px), batch 2", 2, fasterrcnn,
        detection_batch, detect, sgd, compiled_part="backbone", nhwc_inputs=False,
    ),
}  # fmt: skip


def failure(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".replace("|", "/")
    return f"failed: {text[:120]}"


class Runner:
    """One variant of one family: its model, optimizer and batch, built once; ``step()`` trains one step."""

    def __init__(self, family: Family, variant: str) -> None:
        torch.manual_seed(0)
        self.family, self.variant = family, variant
        model = family.build().train()
        batch = family.batch()
        if variant == "channels_last":
            model.to(memory_format=torch.channels_last)
            if family.nhwc_inputs:
                batch = tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in batch)
        self.optimizer = family.optimizer([p for p in model.parameters() if p.requires_grad])
        self.forward = model
        if variant == "compile":
            if family.compiled_part:
                setattr(model, family.compiled_part, torch.compile(getattr(model, family.compiled_part)))
            else:
                self.forward = torch.compile(model)
        self.model, self.batch = model, batch

    def step(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.variant == "bf16"):
            loss = self.family.loss(self.forward, self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the loss is {loss.item()}")

    def seconds(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - start


@dataclass
class FamilyResult:
    family: Family
    steps: int = 0
    rounds: int = 0
    rates: dict[str, list[float]] | None = None
    warmup: dict[str, float] | None = None
    failed: dict[str, str] | None = None
    slow: set[str] | None = None


def measure_family(
    family: Family,
    variants: list[str],
    rounds: int,
    seconds: float,
    slow: float,
    quick: bool = False,
    progress: Callable[[str], None] = print,
) -> FamilyResult:
    result = FamilyResult(family, rounds=rounds, rates={}, warmup={}, failed={}, slow=set())
    variants = ["baseline", *[v for v in variants if v != "baseline"]]
    runners: dict[str, Runner] = {}
    for variant in variants:
        start = time.perf_counter()
        try:
            runner = Runner(family, variant)
            for _ in range(COMPILE_WARMUP_STEPS if variant == "compile" else 1):
                runner.step()
        except Exception as err:  # noqa: BLE001 (any failure of a variant is a result, not a crash)
            result.failed[variant] = failure(err)
            progress(f"{family.name} {variant}: {result.failed[variant]}")
            continue
        runners[variant] = runner
        result.warmup[variant] = time.perf_counter() - start
        progress(f"{family.name} {variant}: warm-up {result.warmup[variant]:.1f} s")
    if "baseline" not in runners:
        return result
    if quick:
        result.steps = 1
    else:  # as many steps as the baseline trains in about `seconds`
        one = runners["baseline"].seconds(1)
        result.steps = max(1, min(500, round(seconds / one)))
    names = list(runners)
    result.rates = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r > 0 and name in result.slow:
                continue
            try:
                elapsed = runners[name].seconds(result.steps)
            except Exception as err:  # noqa: BLE001
                result.failed[name] = failure(err)
                runners.pop(name)
                continue
            result.rates[name].append(family.images * result.steps / elapsed)
            if elapsed > slow and name != "baseline":
                result.slow.add(name)
        names = [n for n in names if n in runners]
        progress(
            f"{family.name} round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {result.rates[n][-1]:.3g} img/s" for n in names if len(result.rates[n]) == r + 1)
        )
    return result


def cells(result: FamilyResult, variants: list[str]) -> list[str]:
    """The table row of one family: baseline images/s, each variant's ratio to it, the compile warm-up."""
    family = result.family
    row = [family.name, family.shape]
    base = result.rates.get("baseline") if result.rates else None
    row.append(f"{statistics.median(base):.3g}" if base else result.failed.get("baseline", "-"))
    for variant in variants:
        if variant == "baseline":
            continue
        if variant in result.failed:
            row.append(result.failed[variant])
        elif not base or not result.rates.get(variant):
            row.append("-")
        else:
            rates = result.rates[variant]
            ratios = pairing.ratios(rates, base[: len(rates)])
            text = f"{statistics.median(ratios):.2f}x"
            if len(ratios) > 1:
                text += f" ({pairing.value_range(ratios)})"
            text += f", {statistics.median(rates):.3g} img/s"
            if len(ratios) == 1 and result.rounds > 1:
                text += ", 1 round (slow)"
            row.append(text)
    if "compile" in variants:
        warm = result.warmup.get("compile") if result.warmup else None
        row.append(f"{warm:.0f} s" if warm is not None else "-")
    row.append(f"{result.rounds} x {result.steps} steps")
    return row


def columns(variants: list[str]) -> list[str]:
    names = {"channels_last": "channels_last", "compile": "torch.compile", "bf16": "bf16 autocast"}
    out = ["family", "input, batch", "baseline fp32 images/s"]
    out += [f"{names[v]} vs baseline" for v in variants if v != "baseline"]
    if "compile" in variants:
        out.append(f"compile: first {COMPILE_WARMUP_STEPS} steps")
    out.append("rounds x timed steps")
    return out


NOTE = (
    "Plain PyTorch loops on synthetic random tensors (the network, its backward and the optimizer step; no data "
    "loading). Ratios: median over paired rounds of variant / baseline images per second in the same round, "
    "(min-max) over rounds."
)


def run(
    families: list[str],
    variants: list[str],
    rounds: int,
    seconds: float,
    slow: float,
    quick: bool = False,
    progress: Callable[[str], None] = print,
) -> tuple[list[str], list[list[str]]]:
    variants = ["baseline", *[v for v in VARIANTS if v in variants and v != "baseline"]]
    rows = []
    for name in families:
        result = measure_family(FAMILIES[name], variants, rounds, seconds, slow, quick, progress)
        rows.append(cells(result, variants))
    return columns(variants), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="about how long the baseline's timed steps take")
    parser.add_argument("--slow", type=float, default=10.0, help="a variant whose timed steps take longer: 1 round")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="1 round of 1 step (checks that it runs)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    header, rows = run(args.families, args.variants, rounds, args.seconds, args.slow, args.quick)
    print(pairing.machine_line())
    print(NOTE)
    print(pairing.text_table(header, rows))


if __name__ == "__main__":
    main()
