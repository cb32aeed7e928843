"""``visiontrain check`` (also ``make check``): is this environment ready to train? Versions, the CPU's and
accelerators' features, the precisions worth using, whether torchvision's compiled operators load with this torch,
and what DATA_DIR holds. Each problem is one sentence with its fix; the exit status is 1 when there is one.

Imports only what it reports on, each inside its own check, so that a broken install is reported, not raised.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "torchmetrics", "timm",
            "segmentation-models-pytorch", "optuna", "onnx", "onnxruntime")  # fmt: skip
# what each data config finds under DATA_DIR (conf/data/*.yaml), by the folder or file that says it is there
DATASETS = {
    "mnist": "MNIST/raw",
    "cifar10": ("cifar-10-batches-py", "cifar10/train"),
    "pennfudan, pennfudan_seg": "PennFudanPed/PNGImages",
    "oxford_pet, oxford_pet_breeds": "oxford-iiit-pet/images",
    "voc_seg": "VOCdevkit/VOC2012/JPEGImages",
}


def line(name: str, value: str) -> None:
    print(f"  {name:<36}{value}")


def versions() -> list[str]:
    print("versions")
    line("python", f"{platform.python_version()} ({sys.executable})")
    missing = []
    for package in PACKAGES:
        installed = _version(package)
        line(package, installed)
        if installed == NOT_INSTALLED:
            missing.append(package)
    return [f'{", ".join(missing)} not installed: run pip install -e ".[dev]".'] if missing else []


def cpuinfo(key: str) -> str:
    """The first ``key`` line of /proc/cpuinfo (Linux); "" elsewhere."""
    try:
        rows = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((row.split(":", 1)[1].strip() for row in rows if row.startswith(key)), "")


def hardware() -> list[str]:
    import torch

    print("hardware")
    flags = set(cpuinfo("flags").split())
    model = cpuinfo("model name")
    line("cpu", f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} logical cores")
    capability = torch.backends.cpu.get_cpu_capability()
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags] or ["(flags not readable)"]
    line("cpu features", f"{' '.join(features)}; torch uses {capability}")
    cuda = torch.cuda.is_available()
    line("cuda", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if cuda else "no GPU visible")
    line("mps", "available" if torch.backends.mps.is_available() else "no")
    precisions = ["32-true"]
    if cuda:
        precisions += ["16-mixed"] + (["bf16-mixed"] if torch.cuda.is_bf16_supported() else [])
    elif {"avx512_bf16", "amx_bf16"} & flags:
        precisions += ["bf16-mixed"]
    line("precisions worth using", ", ".join(precisions))
    if not cuda and "bf16-mixed" not in precisions:
        line("note", "no bf16 instructions: bf16-mixed runs here, emulated and several times slower than 32-true")
    return []


def torchvision_operators() -> list[str]:
    """torchvision's compiled operators (nms, roi_align) must load with this torch: a torchvision built for another
    torch imports fine and fails at the first detector (``operator torchvision::nms does not exist``)."""
    print("torchvision operators")
    try:
        import torch
        import torchvision
        from torchvision.ops import nms

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        kept = nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
        assert kept.tolist() == [0]
    except Exception as err:  # what a mismatched pair raises varies: the first line says which
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        line("nms", f"FAILED ({reason})")
        return [
            f"torchvision {_version('torchvision')} does not run with torch {_version('torch')} ({reason}); install "
            "the pair built for each other: pip install --force-reinstall torch torchvision (same index for both)."
        ]
    line("nms", f"runs (torchvision {torchvision.__version__} with torch {torch.__version__})")
    return []


NOT_INSTALLED = "not installed"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def data_dir() -> list[str]:
    print("data")
    given = os.environ.get("DATA_DIR")
    folder = Path(given) if given else Path.cwd() / "data"
    line("DATA_DIR", f"{folder}{'' if given else ' (not set: ./data)'}")
    if not folder.is_dir():
        line("datasets", "none (the folder does not exist)")
        if given:
            return [f"DATA_DIR={given} is not a folder; point it at your datasets (or unset it to use ./data)."]
        return []
    for configs, marks in DATASETS.items():
        marks = (marks,) if isinstance(marks, str) else marks
        found = next((mark for mark in marks if (folder / mark).exists()), None)
        line(f"data={configs}", f"found ({folder / found})" if found else "not found (downloaded on first use)")
    return []


CHECKS: tuple[Callable[[], list[str]], ...] = (versions, hardware, torchvision_operators, data_dir)


def main() -> int:
    problems: list[str] = []
    for check in CHECKS:
        try:
            problems += check()
        except Exception as err:  # a check that cannot run is itself the finding
            problems.append(f"{check.__name__} could not run ({type(err).__name__}: {err}).")
    print()
    if problems:
        for problem in problems:
            print(f"problem: {problem}")
        return 1
    print("ready: no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
