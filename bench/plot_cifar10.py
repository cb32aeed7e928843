"""Accuracy against wall time for CIFAR-10 runs measured one after the other: the JSON files of
bench/cifar10_fast.py (framework and plain-loop arms) and bench/airbench_peer.py (the peer), in one figure and
one table — each run's accuracy after every epoch and its final accuracy, and each arm's mean over seeds.

    python bench/plot_cifar10.py RUNS.json [RUNS.json ...] --label ARM=NAME ... [--plot cifar10.png] [--title ...]

``--label framework="visiontrain, flip_translate"`` names an arm (arms: framework, plain, peer); runs of one arm
from several files are pooled.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def runs_of(path: Path) -> list[dict]:
    """Each run as {arm, seed, epochs: [(seconds, accuracy)], final, wall} from either bench's JSON."""
    data = json.loads(path.read_text())
    runs = []
    for run in data["runs"]:
        if "arm" in run:  # bench/cifar10_fast.py: epochs as (epoch, seconds, accuracy)
            epochs = [(t, acc) for _, t, acc in run["epochs"]]
            runs.append({"arm": run["arm"], "seed": run["seed"], "epochs": epochs, "final": run["final_acc"],
                         "wall": run["total_s"]})  # fmt: skip
        else:  # bench/airbench_peer.py: epochs without TTA, the final with airbench's TTA level 2
            runs.append({"arm": "peer", "seed": run["seed"], "epochs": [tuple(e) for e in run["epochs"]],
                         "final": run["accuracy"]["2"], "wall": run["wall_s"]})  # fmt: skip
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--label", action="append", default=[], help="ARM=NAME")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--title", default="CIFAR-10 test images 0-999")
    args = parser.parse_args()
    names = dict(label.split("=", 1) for label in args.label)
    runs = [run for path in args.files for run in runs_of(path)]
    by_arm = defaultdict(list)
    for run in runs:
        by_arm[run["arm"]].append(run)

    print("| arm | seed | accuracy after each epoch @ wall time | final | wall |")
    print("|---|---|---|---|---|")
    for arm, arm_runs in by_arm.items():
        for run in arm_runs:
            curve = ", ".join(f"{acc:.1%} @ {t:.0f} s" for t, acc in run["epochs"])
            print(f"| {names.get(arm, arm)} | {run['seed']} | {curve} | **{run['final']:.1%}** | {run['wall']:.0f} s |")
    for arm, arm_runs in by_arm.items():
        finals, walls = [r["final"] for r in arm_runs], [r["wall"] for r in arm_runs]
        spread = f"({min(finals):.1%}-{max(finals):.1%})"
        wall = f"{statistics.mean(walls):.0f} s ({min(walls):.0f}-{max(walls):.0f})"
        mean = f"{statistics.mean(finals):.2%}"
        print(f"{names.get(arm, arm)}: mean {mean} {spread} over {len(finals)} seeds, mean wall {wall}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        colours = dict(zip(by_arm, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        for arm, arm_runs in by_arm.items():
            for i, run in enumerate(arm_runs):
                minutes = [t / 60 for t, _ in run["epochs"]]
                ax.plot(minutes, [acc * 100 for _, acc in run["epochs"]], color=colours[arm], alpha=0.75,
                        marker=".", label=names.get(arm, arm) if i == 0 else None)  # fmt: skip
                ax.plot(run["wall"] / 60, run["final"] * 100, color=colours[arm], marker="*", markersize=11)
        ax.axhline(92, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylim(50, 96)
        ax.set_xlabel("wall time since start (min); * = final test with the arm's TTA")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(args.title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
