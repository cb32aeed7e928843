"""The fast CIFAR-10 recipe: visiontrain (``python train.py experiment=cifar10_fast``) against the same training
written as a plain PyTorch loop (bench/cifar10_plain.py), in one run, on the real images.

Both arms train the same network (visiontrain.models.airbench) on the same data (the 50,000 training images;
tested on what DATA_DIR/cifar10/test holds: for the shared copy, CIFAR-10 test images 0-999) with the same
augmentation, optimizer, schedule, lookahead and flip TTA. After every epoch each arm's test accuracy is
measured off the clock. Wall time runs from the start of each arm (the framework's includes reading the data,
building everything, the whitening set-up and the final test; the plain arm's includes its set-up), plus
the import time of the process, printed once. The arms alternate seed by seed, so both see the same machine
conditions. Printed: a table of accuracy after each epoch against wall time, per arm and seed, then
time-to-same-accuracy: for each seed, the first epoch at which each arm reaches the lower of the two final
accuracies, and speed framework / plain = plain's time / framework's time (1 = as fast; the goal >= 0.95).

    DATA_DIR=/work/shared/datasets python bench/cifar10_fast.py [--epochs 9] [--seeds 42 1 2] [--plain-seeds 42] \
        [--widths 32 64 64] [--batch-size 512] [--lr 0.75] [--arms framework plain] [--no-channels-last] [--bf16] \
        [--plot cifar10_fast.png] [--json cifar10_fast.json] \
        [--override trainer.max_epochs=...]
    python bench/cifar10_fast.py --step-rates [--rate-widths 64/256/256 32/64/64] [--rate-batches 512] [--rounds 2]

``--override`` passes further config overrides to the framework arm only (e.g. to try a recipe change).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from lightning import Callback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_plain  # noqa: E402

from visiontrain.cli.train import train as visiontrain_train  # noqa: E402
from visiontrain.runs.config import compose_config  # noqa: E402

IMPORTS_DONE = time.perf_counter()


def cpu_name() -> str:
    name = platform.processor() or "cpu"
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        family = next(line.split(":", 1)[1].strip() for line in info if line.startswith("cpu family"))
        number = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model\t"))
        name = f"{model} (family {family} model {number})"
    except (OSError, StopIteration):
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name}, {os.cpu_count()} logical CPUs, {capability}, torch threads {torch.get_num_threads()}"


class EpochProbe(Callback):
    """Framework arm: wall time at each epoch end (minus the probes' own time) and test accuracy, off the clock."""

    records: list[tuple[int, float, float]] = []
    start = 0.0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        probe_start = time.perf_counter()
        elapsed = probe_start - EpochProbe.start
        accuracy = self.test_accuracy(trainer, pl_module)
        EpochProbe.records.append((trainer.current_epoch + 1, elapsed, accuracy))
        line = f"  epoch {trainer.current_epoch + 1}: {elapsed:.0f} s, test acc {accuracy:.4f} (tta {pl_module.tta})"
        if pl_module.tta == "flip_translate":  # the same weights under the cheaper TTA, for the on/off comparison
            tta = pl_module.tta
            pl_module.tta = "flip"
            line += f", {self.test_accuracy(trainer, pl_module):.4f} (tta flip)"
            pl_module.tta = tta
        print(line, flush=True)
        EpochProbe.start += time.perf_counter() - probe_start  # the probe is not part of the run's time

    @staticmethod
    def test_accuracy(trainer, pl_module) -> float:
        dm = trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(dm.test_set), 1000):
                images, labels = dm.test_set.images[i : i + 1000], dm.test_set.labels[i : i + 1000]
                images = dm.augment(images.to(pl_module.device), train=False)
                correct += int((pl_module.evaluation_logits(images).argmax(1).cpu() == labels).sum())
        pl_module.train(was_training)
        return correct / len(dm.test_set)


def framework_arm(args, seed: int) -> tuple[list[tuple[int, float, float]], float, float]:
    overrides = [
        "experiment=cifar10_fast",
        f"paths.data_dir={args.data_dir}",
        f"data.cache_dir={args.cache_dir}",
        f"seed={seed}",
        f"trainer.max_epochs={args.epochs}",
        f"data.batch_size={args.batch_size}",
        f"model.optimizer.lr={args.lr}",
        f"model.net.widths=[{','.join(map(str, args.widths))}]",
        f"model.channels_last={args.channels_last}",
        "trainer.accelerator=cpu",
        "extras.print_config=false",
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "+callbacks.epoch_probe._target_=__main__.EpochProbe",
        *(["trainer.precision=bf16-mixed"] if args.bf16 else []),
        *args.override,
    ]
    cfg = compose_config("train", overrides, Path(tempfile.mkdtemp(prefix="cifar10_fast_")))
    EpochProbe.records = []
    EpochProbe.start = time.perf_counter()
    metrics = visiontrain_train(cfg)
    total = time.perf_counter() - EpochProbe.start
    return list(EpochProbe.records), total, metrics.get("test/acc", float("nan"))


def plain_arm(args, seed: int) -> tuple[list[tuple[int, float, float]], float, float]:
    records = []
    start = [time.perf_counter()]
    data = cifar10_plain.load_data(args.data_dir, args.cache_dir)  # on the clock, as the framework's

    def on_epoch(epoch: int, net) -> None:
        probe_start = time.perf_counter()
        records.append((epoch, probe_start - start[0], cifar10_plain.evaluate(net, data[2], data[3])))
        print(f"  epoch {epoch}: {records[-1][1]:.0f} s, test acc {records[-1][2]:.4f}", flush=True)
        start[0] += time.perf_counter() - probe_start

    cifar10_plain.train(
        data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, widths=tuple(args.widths), seed=seed,
        channels_last=args.channels_last, bf16=args.bf16, on_epoch=on_epoch,
    )  # fmt: skip
    total = time.perf_counter() - start[0]
    return records, total, records[-1][2]


def step_rates(args) -> None:
    """Training images/s of the network alone (forward, backward, SGD step on random batches) for each width
    and memory-format/precision variant, alternating the variants for ``--rounds`` rounds (shared CPUs drift):
    what channels_last, bf16 autocast, width and batch size buy, without a whole training run each."""
    import statistics

    from visiontrain.models.airbench import AirbenchNet

    variants = [(cl, bf16) for cl in (False, True) for bf16 in (False, True)]
    configs = [(tuple(w), b) for w in args.rate_widths for b in args.rate_batches]
    rates: dict = {(c, v): [] for c in configs for v in variants}
    for _ in range(args.rounds):
        for (widths, batch), (cl, bf16) in rates:
            torch.manual_seed(0)
            net = AirbenchNet(widths=widths).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            params = [p for p in net.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=0.01, momentum=0.85, nesterov=True)
            x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            times = []
            for _ in range(args.rate_steps + 1):  # the first step sets oneDNN up: not counted
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = net(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - start)
            rates[(widths, batch), (cl, bf16)].append(batch / statistics.median(times[1:]))
    print(f"\ntraining images/s of the network alone (median of {args.rounds} alternating rounds); CPU: {cpu_name()}")
    names = [f"{'bf16 autocast' if bf16 else 'fp32'} {'channels_last' if cl else 'NCHW'}" for cl, bf16 in variants]
    print("| widths | batch | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(variants))
    for widths, batch in configs:
        cells = " | ".join(f"{statistics.median(rates[(widths, batch), v]):.0f}" for v in variants)
        print(f"| {'/'.join(map(str, widths))} | {batch} | {cells} |", flush=True)


def plot(results: dict, args, test_name: str) -> None:
    """Accuracy after each epoch against wall time, one line per arm and seed, the goal's box shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for (arm, seed), (records, _, _) in results.items():
        minutes = [t / 60 for _, t, _ in records]
        accs = [acc * 100 for _, _, acc in records]
        ax.plot(minutes, accs, marker="o" if arm == "framework" else "s", linestyle="-" if arm == "framework" else "--",
                label=f"{arm}, seed {seed}")  # fmt: skip
    ax.axhline(94, color="grey", linewidth=0.8, linestyle=":")
    ax.axvline(15, color="grey", linewidth=0.8, linestyle=":")
    ax.annotate("goal: 94 % in 15 min", (15, 94), textcoords="offset points", xytext=(-110, 4), fontsize=8)
    ax.set_xlabel("wall time since start (min)")
    ax.set_ylabel(f"test accuracy (%), {test_name}")
    widths = "/".join(map(str, args.widths))
    ax.set_title(f"experiment=cifar10_fast: widths {widths}, batch {args.batch_size}, {args.epochs} epochs\n"
                 f"{cpu_name()}", fontsize=8)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"plot: {args.plot}")


def first_reaching(records, target: float) -> float | None:
    return next((t for _, t, acc in records if acc >= target - 1e-9), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    parser.add_argument("--cache-dir", default="~/.cache/visiontrain")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--plain-seeds", type=int, nargs="+", default=None, help="the plain arm's seeds (default all)")
    # experiment=cifar10_fast's values: the plain arm has no config to read them from
    parser.add_argument("--widths", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.75, help="0.75 at batch 512; scale with the batch size")
    parser.add_argument("--arms", nargs="+", default=["framework", "plain"], choices=["framework", "plain"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--override", nargs="*", default=[])
    parser.add_argument("--plot", default=None, help="write accuracy against wall time to this PNG")
    parser.add_argument("--json", default=None, help="write the per-epoch records to this JSON file")
    parser.add_argument("--step-rates", action="store_true", help="only measure the network's training img/s")
    parser.add_argument("--rate-widths", type=lambda s: [int(v) for v in s.split("/")], nargs="+",
                        default=[[64, 256, 256], [32, 64, 64]])  # fmt: skip
    parser.add_argument("--rate-batches", type=int, nargs="+", default=[512])
    parser.add_argument("--rate-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.step_rates:
        print(f"CPU: {cpu_name()}")
        step_rates(args)
        return
    args.cache_dir = os.path.expanduser(args.cache_dir)
    if not (Path(args.data_dir) / "cifar10").is_dir():
        raise SystemExit(f"error: no {args.data_dir}/cifar10; set DATA_DIR to the folder holding cifar10/.")
    print(f"CPU: {cpu_name()}")
    print(f"imports: {IMPORTS_DONE - PROCESS_START:.1f} s (once per process, not in the figures below)")
    print(f"recipe: widths {args.widths}, batch {args.batch_size}, lr {args.lr}, {args.epochs} epochs, channels_last "
          f"{args.channels_last}, bf16 autocast {args.bf16}, overrides {args.override}", flush=True)  # fmt: skip

    results: dict[tuple[str, int], tuple[list, float, float]] = {}
    for seed in args.seeds:
        for arm in args.arms:
            if arm == "plain" and args.plain_seeds is not None and seed not in args.plain_seeds:
                continue
            results[arm, seed] = framework_arm(args, seed) if arm == "framework" else plain_arm(args, seed)
            records, total, final = results[arm, seed]
            line = "  ".join(f"e{e}:{t:.0f}s/{acc:.4f}" for e, t, acc in records)
            print(f"[{arm} seed {seed}] {line}  | total {total:.0f} s, final test acc {final:.4f}", flush=True)

    test_name = "CIFAR-10 test images 0-999" if "shared" in str(args.data_dir) else "test split"
    print(f"\naccuracy on {test_name} (flip TTA) after each epoch vs wall time; CPU: {cpu_name()}")
    print("| arm | seed | " + " | ".join(f"epoch {e}" for e in range(1, args.epochs + 1)) + " | total wall |")
    print("|---|---|" + "---|" * args.epochs + "---|")
    for (arm, seed), (records, total, _) in results.items():
        cells = " | ".join(f"{acc * 100:.1f}% @ {t:.0f} s" for _, t, acc in records)
        print(f"| {arm} | {seed} | {cells} | {total:.0f} s |")
    for arm in args.arms:
        seeds = [s for s in args.seeds if (arm, s) in results]
        finals = [results[arm, s][2] for s in seeds]
        totals = [results[arm, s][1] for s in seeds]
        spread = f" (min {min(finals):.4f}, max {max(finals):.4f})" if len(finals) > 1 else ""
        print(f"{arm}: mean final test acc {sum(finals) / len(finals):.4f}{spread} over seeds {seeds}, "
              f"mean wall {sum(totals) / len(totals):.0f} s")  # fmt: skip
    if args.json:
        records = [{"arm": arm, "seed": seed, "epochs": [list(r) for r in rec], "total_s": total, "final_acc": final}
                   for (arm, seed), (rec, total, final) in results.items()]  # fmt: skip
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "args": vars(args), "runs": records}, indent=1))
    if args.plot:
        plot(results, args, test_name)
    if set(args.arms) == {"framework", "plain"}:
        for seed in [s for s in args.seeds if ("plain", s) in results]:
            fw, pl = results["framework", seed][0], results["plain", seed][0]
            target = min(fw[-1][2], pl[-1][2])
            t_fw, t_pl = first_reaching(fw, target), first_reaching(pl, target)
            print(f"seed {seed}: time to {target:.4f}: framework {t_fw:.0f} s, plain {t_pl:.0f} s; "
                  f"speed framework / plain = {t_pl / t_fw:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
