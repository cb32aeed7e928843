"""What the framework-vs-plain benches share: the step clock both sides use, the visiontrain side's run, paired rounds,
the spread of per-round ratios, the machine line and the tables.

Timing, the same on both sides: a training run ticks ``StepClock`` at the end of every optimizer step (the plain loop
calls ``tick()``, the Trainer through ``FrameworkClock``); its rate is the steps after the first ``warmup`` divided by
the time from the end of the last warm-up step to the end of the last step. Start-up (imports, composing, building
the network, reading the data, starting DataLoader workers) and the warm-up steps are outside the clock; everything
between two step ends (fetching the batch, forward, backward, step, the schedule, the metrics, hooks and epoch ends
when the steps cross one) is inside it.

Shared CPUs drift by +-15% from one second to the next, so sides are compared within a round (two runs seconds
apart), the sides alternate which goes first, and the median and the spread of the per-round ratios are reported.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

import torch
from lightning import Callback


def data_dir(needed: str) -> Path:
    """$DATA_DIR (default ``data``), which must hold the folder ``needed``."""
    root = Path(os.environ.get("DATA_DIR", "data"))
    if not (root / needed).is_dir():
        raise SystemExit(f"error: no {needed} in {root}; set DATA_DIR to the datasets folder.")
    return root


class StepClock:
    """The end time of each training step; ``rate()`` is steps per second after the first ``warmup`` steps."""

    def __init__(self, warmup: int = 1, timer: Callable[[], float] | None = None) -> None:
        if warmup < 1:
            raise ValueError("warmup must be at least 1: the clock starts when the last warm-up step ends")
        self.warmup = warmup
        self.timer = timer or time.perf_counter  # time.process_time: the process's CPU time
        self.ends: list[float] = []

    def tick(self) -> None:
        self.ends.append(self.timer())

    @property
    def steps(self) -> int:
        return len(self.ends)

    def rate(self) -> float:
        timed = len(self.ends) - self.warmup
        if timed < 1:
            raise RuntimeError(f"{len(self.ends)} steps ran, not more than the {self.warmup} warm-up step(s)")
        return timed / (self.ends[-1] - self.ends[self.warmup - 1])

    def median_step(self) -> float:
        """The median time of one step after the warm-up (seconds): robust to the odd step a busy machine slows."""
        timed = self.ends[self.warmup - 1 :]
        return statistics.median(b - a for a, b in zip(timed, timed[1:]))


class FrameworkClock(Callback):
    """Ticks ``FrameworkClock.clock`` at the end of every training batch the Trainer runs (after its optimizer step,
    scheduler step and the task's logging). A class attribute, because Hydra instantiates the callback by name."""

    clock: StepClock | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        FrameworkClock.clock.tick()


# nothing that writes output or evaluates, as in bench/throughput.py: no validation, test, checkpoints, logger,
# progress bar or layer table; every other callback (finite-loss check, epoch line, learning curves) stays on
QUIET_RUN = [
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "test=false",
    "extras.print_config=false",
    "logger=none",
    "callbacks.model_checkpoint=null",
    "callbacks.last_checkpoint=null",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_checkpointing=false",
    "+trainer.enable_model_summary=false",
]


def framework_clock(
    overrides: Sequence[str],
    steps: int,
    warmup: int = 1,
    channels_last: bool | None = None,
    timer: Callable[[], float] | None = None,
) -> StepClock:
    """The step clock of ``visiontrain.cli.train.train`` on the config ``overrides`` compose (after ``QUIET_RUN``),
    trained for ``warmup + steps`` optimizer steps (``trainer.max_steps``; the recipe's epochs are left as they are,
    so the learning-rate schedule spans exactly those steps, as on the plain side), in the memory format
    ``channels_last`` says (None: the config's own). The run folder is deleted."""
    from visiontrain.cli.train import train
    from visiontrain.runs.config import compose_config

    clock = FrameworkClock.clock = StepClock(warmup, timer)
    output = Path(tempfile.mkdtemp(prefix="bench_run_"))
    target = f"{FrameworkClock.__module__}.{FrameworkClock.__qualname__}"
    try:
        cfg = compose_config(
            "train",
            [
                *QUIET_RUN,
                *overrides,
                *([] if channels_last is None else [f"model.channels_last={str(channels_last).lower()}"]),
                f"trainer.max_steps={warmup + steps}",
                f"+callbacks.bench_clock._target_={target}",
            ],
            output,
        )
        train(cfg)
    finally:
        FrameworkClock.clock = None
        shutil.rmtree(output, ignore_errors=True)
    if clock.steps != warmup + steps:
        raise RuntimeError(f"visiontrain ran {clock.steps} steps, not {warmup + steps}: the recipe ended earlier")
    return clock


def framework_rate(overrides: Sequence[str], steps: int, warmup: int = 1, channels_last: bool | None = None) -> float:
    """Steps per second of :func:`framework_clock`'s run."""
    return framework_clock(overrides, steps, warmup, channels_last).rate()


def framework_channels_last(overrides: Sequence[str]) -> bool | None:
    """Whether the framework trains the recipe ``overrides`` compose in channels_last: its ``model.channels_last``,
    ``auto`` resolved for that network as visiontrain.models.memory_format decides. None: the recipe has no such
    option (the network stays NCHW). The benches set the answer explicitly on both sides."""
    from hydra.utils import instantiate

    from visiontrain.runs.config import compose_config

    cfg = compose_config("train", list(overrides), Path(tempfile.gettempdir()) / "bench_compose")
    option = cfg.model.get("channels_last")
    if option is None:
        return None
    try:
        from visiontrain.models import memory_format
    except ImportError:  # a visiontrain without "auto": the option is a bool
        return bool(option)
    return memory_format.resolve(option, instantiate(cfg.model.net))


def paired_rounds(
    sides: dict[str, Callable[[], float]], rounds: int, progress: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Each side once per round, the order rotating from round to round (with two sides: alternating which goes
    first), so each side sees the machine's conditions as often first as second. Every side runs with the thread
    count the process started with; a side that changes it is reported and the count put back."""
    names = list(sides)
    rates: dict[str, list[float]] = {name: [] for name in names}
    threads = torch.get_num_threads()
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(sides[name]())
            if torch.get_num_threads() != threads:
                warnings.warn(f"{name} changed torch's thread count to {torch.get_num_threads()}", stacklevel=2)
                torch.set_num_threads(threads)
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.3g}" for n in names))
    return rates


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    return [a / b for a, b in zip(numerators, denominators)]


def value_range(values: Sequence[float], digits: int = 2) -> str:
    """``min–max`` of the values ("-" for fewer than 2)."""
    if len(values) < 2:
        return "-"
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def interquartile(values: Sequence[float], digits: int = 2) -> str:
    """The interquartile range ``q1–q3`` (inclusive method; "-" for fewer than 4 values, where it says little)."""
    if len(values) < 4:
        return "-"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q1:.{digits}f}–{q3:.{digits}f}"


def cpu_model() -> str:
    name = platform.processor() or platform.machine() or "cpu"
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        fields = {}
        for line in info:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        name = fields.get("model name", name)
        if "cpu family" in fields and "model" in fields:
            name += f" (family {fields['cpu family']} model {fields['model']})"
        flags = fields.get("flags", "").split()
        extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
        if extensions:
            name += f", {'/'.join(extensions)}"
    except OSError:
        pass
    return name


def versions() -> str:
    import torchvision

    found = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    for package in ("lightning", "segmentation-models-pytorch"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found) + f", python {platform.python_version()}"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def machine_line() -> str:
    """The machine as the tables need it said: cores, torch threads, CPU, library versions."""
    return (
        f"machine: os.cpu_count() {os.cpu_count()}, torch.get_num_threads() {torch.get_num_threads()}, "
        f"CPU {cpu_model()} ({torch.backends.cpu.get_cpu_capability()}); {versions()}"
    )


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)), *(len(str(row[i])) for row in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


COLUMNS = [
    "family",
    "what",
    "visiontrain steps/s (median)",
    "plain steps/s (median)",
    "ratio visiontrain/plain (median)",
    "ratio min–max",
    "ratio IQR",
    "rounds x timed steps",
]


def compare(
    family: ModuleType,
    root: Path,
    rounds: int,
    steps: int,
    warmup: int = 1,
    channels_last: bool | None = None,
    progress: Callable[[str], None] | None = None,
    **sizes: int,
) -> list[str]:
    """A row of the table: a family's bench module (bench/throughput*.py: ``plain_rate``, ``framework_rate``,
    ``framework_channels_last``, ``DESCRIPTION``) run in paired rounds, both sides in one memory format (``None``:
    the one the framework's config gives the network). ``sizes`` (``batch_size=``) go to both sides."""
    nhwc = bool(family.framework_channels_last(root)) if channels_last is None else channels_last
    rates = paired_rounds(
        {
            "plain": lambda: family.plain_rate(root, steps, warmup, channels_last=nhwc, **sizes),
            "visiontrain": lambda: family.framework_rate(root, steps, warmup, channels_last=nhwc, **sizes),
        },
        rounds,
        progress=progress and (lambda line: progress(f"{family.FAMILY} {line} steps/s")),
    )
    per_round = ratios(rates["visiontrain"], rates["plain"])
    return [
        family.FAMILY,
        f"{family.DESCRIPTION}, {'NHWC' if nhwc else 'NCHW'}",
        f"{statistics.median(rates['visiontrain']):.3g}",
        f"{statistics.median(rates['plain']):.3g}",
        f"{statistics.median(per_round):.3f}",
        value_range(per_round),
        interquartile(per_round),
        f"{rounds} x {steps}",
    ]


def family_main(family: ModuleType, default_rounds: int = 5, argv: Sequence[str] | None = None) -> None:
    """The command line of one family's bench run on its own: its row of bench/run_all.py's table."""
    parser = argparse.ArgumentParser(description=family.__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=default_rounds)
    parser.add_argument(
        "--steps", type=int, default=family.DEFAULT_STEPS, help="timed steps per run, after the warm-up"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="both sides NHWC (NCHW); default: as the framework's config gives the network (model.channels_last)",
    )
    sized = "batch_size" in inspect.signature(family.plain_rate).parameters  # the others' batch is the recipe's
    if sized:
        parser.add_argument("--batch-size", type=int, default=family.BATCH_SIZE)
    args = parser.parse_args(argv)
    sizes = {"batch_size": args.batch_size} if sized else {}
    row = compare(family, family.data_dir(), args.rounds, args.steps, args.warmup, args.channels_last, print, **sizes)
    print(machine_line())
    print(text_table(COLUMNS, [row]))
