"""Every framework-vs-plain training bench in one process, one table; then the speed-ups of the plain loops.

Part 1, visiontrain vs a plain PyTorch loop, one row per family (bench/throughput.py, throughput_detection.py,
throughput_segmentation.py say what each side does): classification (simple_cnn, MNIST), detection (Faster R-CNN
mobilenet_v3_large_320_fpn, PennFudan), segmentation (UNet, PennFudan masks). The families run one after the other;
within a family the two sides alternate for ``--rounds`` rounds, each run timed over ``--steps`` training steps after
``--warmup`` (bench/pairing.py). Printed: steps/s of each side (medians), the median of the per-round ratios
visiontrain / plain and their spread (min-max, and the interquartile range from 4 rounds up).

Part 2 (``--speedups``; in the default run too), bench/speedups.py: per model family, training images/s of plain
loops on synthetic tensors, fp32 baseline against channels_last, torch.compile and bf16 autocast.

    DATA_DIR=/work/shared/datasets python bench/run_all.py [--rounds 5] [--steps N] [--warmup 1]
        [--only classification,detection,segmentation,speedups] [--speedups] [--quick] [--markdown PATH]
        [--threads N] [--[no-]channels-last] [--speedup-rounds 3] [--speedup-seconds 1.5]
        [--speedup-families ...] [--speedup-variants ...]

Both sides of a family train in the same memory format, set explicitly on both: by default the one the framework's
config gives the network (``model.channels_last``; ``auto`` resolved as visiontrain.models.memory_format decides),
``--channels-last``/``--no-channels-last`` for another; the table says which. ``--only`` picks part-1 families (and
``speedups`` for part 2); ``--speedups`` alone runs part 2 only. ``--rounds`` given applies to both parts.
``--threads``: torch's intra-op threads for everything (default: torch's own; the DataLoader workers of both sides use 1
each). ``--quick``: 1 round of 2 timed steps (or ``--steps``), speed-ups 1 round of 1 step (it checks that everything
runs; its figures mean nothing). The full default run takes about 15 minutes on 2 quiet cores, half of it part 2
(compilation, and bf16 where the CPU has no bf16 instructions).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairing  # noqa: E402
import speedups  # noqa: E402
import throughput  # noqa: E402
import throughput_detection  # noqa: E402
import throughput_segmentation  # noqa: E402

FAMILIES = {module.FAMILY: module for module in (throughput, throughput_detection, throughput_segmentation)}
QUICK_STEPS = 2


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", "data")))
    parser.add_argument(
        "--rounds", type=int, default=None, help="paired rounds per family (default: 5 in part 1, 3 in part 2)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per run, every family (default: each family's own)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for everything (both sides)")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="part 1, both sides NHWC (NCHW); default: as the framework's config gives each network",
    )
    parser.add_argument("--only", default=None, help=f"comma-separated: {', '.join([*FAMILIES, 'speedups'])}")
    parser.add_argument("--speedups", action="store_true", help="part 2 only (unless --only names families too)")
    parser.add_argument("--quick", action="store_true", help="1 round of a few steps: checks that it runs")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here as Markdown")
    parser.add_argument("--speedup-rounds", type=int, default=None, help="part 2's rounds (default: --rounds, else 3)")
    parser.add_argument("--speedup-seconds", type=float, default=1.5, help="about how long each baseline timing takes")
    parser.add_argument("--speedup-slow", type=float, default=10.0, help="variants slower than this: 1 round")
    parser.add_argument(
        "--speedup-families", nargs="+", default=list(speedups.FAMILIES), choices=list(speedups.FAMILIES)
    )
    parser.add_argument(
        "--speedup-variants", nargs="+", default=list(speedups.VARIANTS), choices=list(speedups.VARIANTS)
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else []
    unknown = [name for name in chosen if name not in (*FAMILIES, "speedups")]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join([*FAMILIES, 'speedups'])}")
    if chosen:
        args.families = [name for name in FAMILIES if name in chosen]
        args.run_speedups = "speedups" in chosen or args.speedups
    elif args.speedups:
        args.families, args.run_speedups = [], True
    else:
        args.families, args.run_speedups = list(FAMILIES), True
    return args


def check_data(root: Path, families: list[str]) -> None:
    needs = {"classification": root / "MNIST" / "raw", "detection": root / "PennFudanPed" / "PNGImages"}
    needs["segmentation"] = needs["detection"]
    missing = sorted({str(needs[f]) for f in families if not needs[f].is_dir()})
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not found; set DATA_DIR (or --data-dir) to the datasets folder.")


def main(argv: list[str] | None = None) -> dict[str, list]:
    args = parse_args(argv)
    check_data(args.data_dir, args.families)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else args.rounds or 5
    speedup_rounds = 1 if args.quick else args.speedup_rounds or args.rounds or 3
    started = time.perf_counter()
    header = [pairing.machine_line(), f"load average at start: {pairing.load_average()}"]
    for line in header:
        say(line)
    rows = []
    for name in args.families:
        steps = args.steps or (QUICK_STEPS if args.quick else FAMILIES[name].DEFAULT_STEPS)
        rows.append(pairing.compare(FAMILIES[name], args.data_dir, rounds, steps, args.warmup, args.channels_last, say))
    speed_columns, speed_rows = [], []
    if args.run_speedups:
        speed_columns, speed_rows = speedups.run(
            args.speedup_families,
            args.speedup_variants,
            speedup_rounds,
            args.speedup_seconds,
            args.speedup_slow,
            quick=args.quick,
            progress=say,
        )
    header.append(
        f"load average at end: {pairing.load_average()}; whole run {time.perf_counter() - started:.0f} s; "
        f"data {args.data_dir}; {args.warmup} warm-up step(s) per run, untimed"
    )
    print()
    for line in header:
        print(line)
    markdown = [f"- {line}\n" for line in header]
    if rows:
        title = "visiontrain vs plain PyTorch loop, training steps per second (paired rounds)"
        print(f"\n{title}\n{pairing.text_table(pairing.COLUMNS, rows)}")
        markdown.append(f"\n{title}\n\n{pairing.markdown_table(pairing.COLUMNS, rows)}\n")
    if speed_rows:
        title = "speed-ups of plain loops on this CPU, training images per second"
        print(f"\n{title}\n{speedups.NOTE}\n{pairing.text_table(speed_columns, speed_rows)}")
        markdown.append(f"\n{title}. {speedups.NOTE}\n\n{pairing.markdown_table(speed_columns, speed_rows)}\n")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("".join(markdown))
        print(f"\nMarkdown written to {args.markdown}")
    return {"comparison": rows, "speedups": speed_rows}


if __name__ == "__main__":
    main()
