"""The peer: airbench's own code (github.com/KellerJordan/cifar10-airbench, package ``airbench``), run on this CPU
on the same images as bench/cifar10_fast.py, its schedule cut to a wall-time budget by its own ``epochs``
argument. Nothing of airbench is copied here: give the path of a clone with ``--airbench``.

airbench is written for one CUDA GPU in fp16. To run it unchanged on a CPU this script swaps, inside this process
only, what has no CPU meaning: ``.cuda()`` is a no-op, ``torch.cuda.Event`` / ``synchronize`` time on the host
clock, ``torch.load(map_location="cuda")`` loads to the CPU (the data files this script writes itself), and
``.half()`` keeps fp32 — with ``--bf16`` the whole of ``train93/94`` then runs under
``torch.autocast("cpu", bfloat16)``, which is what ``trainer.precision=bf16-mixed`` does for visiontrain (fp32
weights, bf16 matrix products); the whitening set-up is kept in fp32 (its patch covariance and eigenvectors
would lose their precision in bf16, as they would in airbench's fp16 without its ``.float()``). Everything
else — network, loader (alternating flip, translate 2, reflect padding), SGD with decoupled hyper-parameters,
schedule, lookahead, whitening bias freezing, label smoothing, TTA level 2 — is airbench's.

    DATA_DIR=../shared/datasets python bench/airbench_peer.py --airbench <clone> [--net 93] [--epochs 11] \\
        [--seeds 42 1 2] [--bf16] [--json peer.json]

Printed per seed: airbench's own table, the accuracy without TTA after each epoch against wall time, then the
final accuracy with TTA (level 2; level 1 and none measured after, off the clock) and the wall time from the
start of the run: loading its data files, network, whitening, training, the final TTA evaluation. airbench's
per-epoch evaluations are taken off the clock, as bench/cifar10_fast.py's probes are.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_fast import cpu_name  # noqa: E402
from cifar10_plain import load_data  # noqa: E402


class HostEvent:
    """torch.cuda.Event's timing interface on the host clock (milliseconds, as CUDA events report)."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.time = 0.0

    def record(self) -> None:
        self.time = time.perf_counter()

    def elapsed_time(self, end: HostEvent) -> float:
        return (end.time - self.time) * 1000


def cpu_twins(bf16: bool) -> None:
    """Make airbench's CUDA-and-fp16 calls run on the CPU (see the module docstring)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    # fp32 storage on the CPU; bf16 compute (when asked) comes from the autocast around the run
    torch.Tensor.half = lambda self, *args, **kwargs: self.float()
    nn.Module.half = lambda self: self.float()
    torch.cuda.Event = HostEvent
    torch.cuda.synchronize = lambda *args, **kwargs: None
    load = torch.load

    def load_to_cpu(path, map_location=None, **kwargs):
        return load(path, map_location="cpu", weights_only=True)

    torch.load = load_to_cpu


def write_airbench_files(folder: Path, data_dir: str, cache_dir: str) -> None:
    """airbench's data files (``cifar10/train.pt``, ``test.pt``: uint8 NHWC images, labels, class names), from the
    images bench/cifar10_fast.py trains and tests on."""
    train_images, train_labels, test_images, test_labels = load_data(data_dir, cache_dir)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "cifar10").mkdir(parents=True)
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        images = images.permute(0, 2, 3, 1).contiguous()  # airbench stores torchvision's NHWC uint8 arrays
        torch.save({"images": images, "labels": labels.long(), "classes": classes}, folder / "cifar10" / f"{name}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airbench", required=True, help="a clone of github.com/KellerJordan/cifar10-airbench")
    parser.add_argument("--net", choices=["93", "94"], default="93")
    parser.add_argument("--epochs", type=float, default=None, help="airbench's train_epochs (default: its own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--bf16", action="store_true", help="run under bf16 autocast (as bf16-mixed)")
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/visiontrain"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(args.airbench).resolve()))
    cpu_twins(args.bf16)
    import airbench
    from airbench import utils

    whiten = utils.init_whitening_conv

    def whiten_in_fp32(layer, train_set, eps=5e-4):
        with torch.autocast("cpu", enabled=False):
            return whiten(layer, train_set.float(), eps)

    utils.init_whitening_conv = whiten_in_fp32

    # airbench tests without TTA after every epoch (tta_level 0) and with it once at the end; the per-epoch tests
    # are timed and taken off the clock, as bench/cifar10_fast.py takes its per-epoch probes off
    evaluate = utils.evaluate
    clock = {"start": 0.0, "off": 0.0, "epochs": []}

    def timed_evaluate(model, loader, tta_level=0):
        began = time.perf_counter()
        accuracy = evaluate(model, loader, tta_level)
        if tta_level == 0:
            clock["epochs"].append((began - clock["start"] - clock["off"], accuracy))
            clock["off"] += time.perf_counter() - began
        return accuracy

    utils.evaluate = timed_evaluate
    train = getattr(airbench, f"train{args.net}")
    test_on = airbench.CifarLoader
    print(f"CPU: {cpu_name()}", flush=True)
    print(f"imports: {time.perf_counter() - PROCESS_START:.1f} s (once per process, not in the figures below)")

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_airbench_files(Path(tmp), args.data_dir, args.cache_dir)
        os.chdir(tmp)  # airbench reads "cifar10/train.pt" relative to the working directory
        for seed in args.seeds:
            torch.manual_seed(seed)
            start = clock["start"] = time.perf_counter()
            clock["off"], clock["epochs"] = 0.0, []
            printed = io.StringIO()
            # one autocast around the whole run: its cache of bf16 weight copies must be off, or every step after
            # the first would compute with the initial weights (Lightning enters autocast once per step instead)
            autocast = torch.autocast("cpu", torch.bfloat16, enabled=args.bf16, cache_enabled=False)
            with contextlib.redirect_stdout(printed), autocast:
                kwargs = {} if args.epochs is None else {"epochs": args.epochs}
                model = train(**kwargs)
            # the final TTA evaluation is inside train(), on the clock
            wall = time.perf_counter() - start - clock["off"]
            sys.stdout.write(printed.getvalue())
            with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
                test = test_on("cifar10", train=False, batch_size=2000)
                accuracy = {level: evaluate(model, test, tta_level=level) for level in (0, 1, 2)}
            for epoch, (seconds, probe) in enumerate(clock["epochs"], 1):
                print(f"  epoch {epoch}: {seconds:.0f} s, test acc {probe:.4f} (no TTA)")
            print(f"seed {seed}: test accuracy {accuracy[2]:.2%} (tta 2), {accuracy[1]:.2%} (mirror), "
                  f"{accuracy[0]:.2%} (none); wall {wall:.0f} s", flush=True)  # fmt: skip
            results.append({"seed": seed, "accuracy": accuracy, "wall_s": wall, "epochs": clock["epochs"],
                            "log": printed.getvalue()})  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": cpu_name(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
