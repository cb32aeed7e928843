"""The training benches run (not how fast): bench/run_all.py on small datasets in the real on-disk formats, the
paired-rounds helpers, the speed-ups part (a variant that fails is a table cell, not a crash), and the plain loops'
written-out settings against the configs the framework composes."""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests import detection_formats, formats
from visiontrain.runs.config import compose_config

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import pairing  # noqa: E402
import speedups  # noqa: E402
import throughput  # noqa: E402
import throughput_detection  # noqa: E402
import throughput_segmentation  # noqa: E402


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory) -> Path:
    """MNIST .gz files and a PennFudanPed folder, large enough for the recipes' splits: 5,000 MNIST images go to
    validation (600 train), PennFudan keeps 70 of 80 images out of detection training (10 train)."""
    root = tmp_path_factory.mktemp("bench_data")
    formats.write_mnist(root, n_train=5600, n_test=100)
    detection_formats.write_pennfudan(root, n_images=80)
    return root


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def markdown_rows(text: str, first_column: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header starts with ``first_column``, by their first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


@pytest.mark.process
def test_run_all_quick_gives_a_row_per_family(tmp_path, bench_data):
    """``run_all.py --quick``: one table row per family, positive finite rates and ratios, in the printed table and
    the Markdown file. One torch thread: the test runs on loaded cores, where two threads' waits cost the most."""
    out = tmp_path / "bench.md"
    env = {**os.environ, "DATA_DIR": str(bench_data), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--steps", "1",
         "--only", "classification,detection,segmentation", "--markdown", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "os.cpu_count() " in result.stdout and "torch.get_num_threads() 1" in result.stdout
    assert re.search(r"torch \S+, torchvision \S+, lightning \S+", result.stdout)
    text = out.read_text()
    rows = markdown_rows(text, "family")
    assert list(rows) == ["classification", "detection", "segmentation"]
    for family, cells in rows.items():
        assert family in result.stdout
        assert cells[1].endswith((", NHWC", ", NCHW")), cells[1]  # the memory format both sides trained in
        visiontrain, plain, ratio = number(cells[2]), number(cells[3]), number(cells[4])
        for value in (visiontrain, plain, ratio):
            assert math.isfinite(value) and value > 0, cells
        assert ratio == pytest.approx(visiontrain / plain, rel=0.05)
        assert cells[-1] == "1 x 1"
    assert not list(tmp_path.glob("outputs")), "the framework's runs write into temporary folders, deleted after"


def test_step_clock_and_paired_rounds():
    clock = pairing.StepClock(warmup=2)
    clock.ends = [10.0, 20.0, 21.0, 22.0, 24.0]  # two slow warm-up steps, then three steps in 4 s
    assert clock.rate() == pytest.approx(0.75)  # timed from the end of the last warm-up step
    with pytest.raises(RuntimeError):
        pairing.StepClock(warmup=1).rate()

    calls = []
    rates = pairing.paired_rounds(
        {"a": lambda: calls.append("a") or 2.0, "b": lambda: calls.append("b") or 4.0}, rounds=4
    )
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # each side first in every other round
    assert rates == {"a": [2.0] * 4, "b": [4.0] * 4}
    ratios = pairing.ratios([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0])
    assert pairing.value_range(ratios) == "0.50–2.00"
    assert pairing.interquartile(ratios) == "0.88–1.62"
    assert pairing.interquartile(ratios[:3]) == "-" and pairing.value_range([1.0]) == "-"
    table = pairing.markdown_table(["x", "y"], [["1", "2"]])
    assert table.splitlines() == ["| x | y |", "|---|---|", "| 1 | 2 |"]


def test_speedups_report_a_failing_compile_and_time_the_rest(monkeypatch):
    """A variant that fails (here torch.compile, as without a C compiler) is a ``failed: <reason>`` cell."""

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        header, rows = speedups.run(["simple_cnn"], list(speedups.VARIANTS), 1, 1.0, 20.0, quick=True, progress=print)
    finally:
        torch.set_num_threads(threads)
    (row,) = rows
    cells = dict(zip(header, row))
    assert number(cells["baseline fp32 images/s"]) > 0
    assert cells["torch.compile vs baseline"] == "failed: RuntimeError: no C compiler found"
    for column in ("channels_last vs baseline", "bf16 autocast vs baseline"):
        ratio = float(cells[column].split("x")[0])
        assert math.isfinite(ratio) and ratio > 0
    assert cells["rounds x timed steps"] == "1 x 1 steps"


def assert_same_execution(cfg, family, root: Path) -> None:
    """The plain loops run eager and fp32 (a recipe that turns on compile or another precision must be mirrored there
    first); the memory format is the one the framework's config gives the network (``model.channels_last``: true,
    false or auto), which the benches find out and set explicitly on both sides."""
    assert cfg.model.get("compile", False) is False
    assert cfg.trainer.precision == "32-true"
    assert family.framework_channels_last(root) in (True, False)


@pytest.mark.process
def test_plain_loops_are_written_with_the_recipes_values(tmp_path):
    """The plain loops write the recipes' values out (they share no config code with the framework): they must
    agree with what the framework composes."""
    cfg = compose_config("train", [], tmp_path / "a")
    assert cfg.data.batch_size == throughput.BATCH_SIZE and cfg.data.val_size == throughput.VAL_SIZE
    assert cfg.data.split_seed == throughput.SPLIT_SEED and not cfg.data.hflip and cfg.data.crop_padding == 0
    optimizer, scheduler = cfg.model.optimizer, cfg.model.scheduler
    assert (optimizer.lr, optimizer.momentum, optimizer.weight_decay, optimizer.nesterov) == (
        throughput.LR, throughput.MOMENTUM, throughput.WEIGHT_DECAY, True,
    )  # fmt: skip
    assert optimizer.fused == throughput.FUSED
    assert scheduler.pct_start == throughput.PCT_START and not cfg.model.decay_norm_and_bias
    assert_same_execution(cfg, throughput, tmp_path)

    det = throughput_detection
    cfg = compose_config("train", det.RECIPE, tmp_path / "b")
    assert (cfg.data.batch_size, cfg.data.num_workers) == (det.BATCH_SIZE, det.NUM_WORKERS)
    assert cfg.data.hflip and cfg.data.photometric and tuple(cfg.data.scale_jitter) == det.SCALE_JITTER
    assert cfg.data.aspect_ratio_grouping and cfg.data.sampler is None
    assert (cfg.data.val_size, cfg.data.test_size, cfg.data.split_seed) == (det.VAL_SIZE, det.TEST_SIZE, det.SPLIT_SEED)
    net = cfg.model.net
    assert (net.family, net.variant, net.weights, net.weights_backbone) == (
        "fasterrcnn", "mobilenet_v3_large_320_fpn", None, None,
    )  # fmt: skip
    for key, value in det.NETWORK.items():
        written = {"box_score_thresh": "box_score_thresh", "box_detections_per_img": "detections_per_img"}
        assert net[written.get(key, key)] == value, key
    optimizer = cfg.model.optimizer
    assert optimizer._target_ == "torch.optim.SGD" and optimizer.nesterov
    assert (optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (det.LR, det.MOMENTUM, det.WEIGHT_DECAY)
    assert optimizer.fused == det.FUSED
    assert cfg.model.scheduler._target_.endswith("cosine_with_warmup")
    assert cfg.model.scheduler.warmup_fraction == det.WARMUP_FRACTION and cfg.model.scheduler.min_lr_ratio == 0
    assert cfg.model.gradient_clip_norm == det.CLIP_NORM and cfg.trainer.gradient_clip_val is None
    assert not cfg.model.decay_norm_and_bias and not cfg.model.masks
    assert_same_execution(cfg, det, tmp_path)

    from hydra.utils import instantiate

    framework_net = instantiate(cfg.model.net, num_classes=1)
    plain_net = det.build_model()
    assert [tuple(p.shape) for p in framework_net.parameters()] == [tuple(p.shape) for p in plain_net.parameters()]
    transform = framework_net.model.transform
    assert (transform.min_size, transform.max_size) == ((det.NETWORK["min_size"],), det.NETWORK["max_size"])

    seg = throughput_segmentation
    cfg = compose_config("train", seg.RECIPE, tmp_path / "c")
    data = cfg.data
    assert (data.image_size, data.batch_size, data.num_workers) == (seg.IMAGE_SIZE, seg.BATCH_SIZE, seg.NUM_WORKERS)
    assert tuple(data.scale) == seg.SCALE and data.hflip and data.color_jitter == seg.COLOR_JITTER
    assert (data.test_fraction, data.val_fraction, data.split_seed) == (
        seg.TEST_FRACTION, seg.VAL_FRACTION, seg.SPLIT_SEED,
    )  # fmt: skip
    assert data.ignore_index == seg.IGNORE_INDEX and data.sampler is None
    model = cfg.model
    assert (model.ce_weight, model.dice_weight, model.class_weights) == (1.0, seg.DICE_WEIGHT, None)
    assert not model.decay_norm_and_bias
    assert_same_execution(cfg, seg, tmp_path)
    assert (model.net.arch, model.net.encoder_name, model.net.encoder_weights) == ("Unet", "resnet18", None)
    assert model.net.encoder_depth == seg.ENCODER_DEPTH and tuple(model.net.decoder_channels) == seg.DECODER_CHANNELS
    assert model.optimizer._target_ == "torch.optim.AdamW"
    assert model.optimizer.fused == seg.FUSED
    assert (model.optimizer.lr, model.optimizer.weight_decay, tuple(model.optimizer.betas)) == (
        seg.LR, seg.WEIGHT_DECAY, seg.BETAS,
    )  # fmt: skip
    s = model.scheduler
    assert s._target_.endswith("one_cycle") and s.anneal_strategy == "cos"
    assert (s.pct_start, s.div_factor, s.final_div_factor) == (seg.PCT_START, seg.DIV_FACTOR, seg.FINAL_DIV_FACTOR)
    framework_net = instantiate(model.net, num_classes=2)
    plain_net = seg.build_model()
    assert [tuple(p.shape) for p in framework_net.parameters()] == [tuple(p.shape) for p in plain_net.parameters()]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def fake_family(name: str, sized: bool, calls: list) -> SimpleNamespace:
    """A bench family module's interface, its sides recording how they were called."""

    def side(label: str, rate: float):
        def run(root, steps, warmup=1, channels_last=None, **sizes):
            calls.append((name, label, steps, warmup, channels_last, sizes))
            return rate

        if sized:  # bench/throughput.py's plain_rate takes the batch size, the recipes' others do not

            def run_sized(root, steps, warmup=1, batch_size=4, channels_last=None):
                return run(root, steps, warmup, channels_last, batch_size=batch_size)

            return run_sized
        return run

    return SimpleNamespace(
        __doc__=f"{name} bench.\n",
        FAMILY=name,
        DESCRIPTION=f"{name} network",
        DEFAULT_STEPS=7,
        BATCH_SIZE=4,  # a constant of every family; only a plain_rate that takes it gets --batch-size
        data_dir=lambda: Path("data"),
        framework_channels_last=lambda root: True,
        plain_rate=side("plain", 2.0),
        framework_rate=side("visiontrain", 1.5),
    )


def test_each_family_script_has_the_run_all_row_as_its_command_line(capsys):
    calls = []
    pairing.family_main(fake_family("detection", False, calls), argv=["--rounds", "2", "--no-channels-last"])
    assert sorted(calls) == sorted([("detection", side, 7, 1, False, {}) for side in ("plain", "visiontrain")] * 2)
    printed = capsys.readouterr().out
    assert "detection  detection network, NCHW  1.5" in printed and "0.750" in printed and "2 x 7" in printed
    with pytest.raises(SystemExit):  # a family whose sides take the recipe's batch has no --batch-size
        pairing.family_main(fake_family("detection", False, []), argv=["--batch-size", "2"])

    calls.clear()
    pairing.family_main(fake_family("classification", True, calls), argv=["--rounds", "1", "--batch-size", "2"])
    assert {call[-1]["batch_size"] for call in calls} == {2} and {call[4] for call in calls} == {True}


def test_plain_loops_share_only_the_files_and_the_networks():
    """Of visiontrain, the plain loops import network builders only (no data, task or config code); the framework
    side is reached through bench/pairing.py alone (``framework_rate``, ``framework_channels_last``)."""
    for name in ("throughput.py", "throughput_detection.py", "throughput_segmentation.py", "speedups.py"):
        ours = {m for m in imported_modules(BENCH / name) if m.split(".")[0] == "visiontrain"}
        assert all(m.startswith("visiontrain.models.") for m in ours), (name, ours)
        assert not {m.split(".")[0] for m in imported_modules(BENCH / name)} & {"lightning", "hydra", "omegaconf"}
    assert {m for m in imported_modules(BENCH / "pairing.py") if m.startswith("visiontrain")} == {
        "visiontrain.cli.train", "visiontrain.runs.config", "visiontrain.models",
    }  # fmt: skip


@pytest.mark.slow
def test_speedups_quick_every_family():
    """Every family in fp32 and channels_last, one step each (compile and bf16 of the large networks take minutes
    on this CPU: run_all measures them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        header, rows = speedups.run(list(speedups.FAMILIES), ["baseline", "channels_last"], 1, 1.0, 20.0, quick=True)
    finally:
        torch.set_num_threads(threads)
    assert [row[0] for row in rows] == list(speedups.FAMILIES)
    for row in rows:
        cells = dict(zip(header, row))
        assert number(cells["baseline fp32 images/s"]) > 0
        assert float(cells["channels_last vs baseline"].split("x")[0]) > 0


@pytest.mark.slow
def test_speedups_compile_for_real():
    """torch.compile (inductor) of simple_cnn: a ratio, or the reason it failed on this machine."""
    header, rows = speedups.run(["simple_cnn"], ["baseline", "compile"], 1, 1.0, 20.0, quick=True)
    cell = dict(zip(header, rows[0]))["torch.compile vs baseline"]
    assert cell.startswith("failed: ") or float(cell.split("x")[0]) > 0
    assert dict(zip(header, rows[0]))["compile: first 2 steps"].endswith(" s") or cell.startswith("failed: ")


@pytest.mark.slow
def test_throughput_cli_still_runs(tmp_path, bench_data):
    """bench/throughput.py, the classification bench on its own, keeps its command line."""
    env = {**os.environ, "DATA_DIR": str(bench_data), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"), "--rounds", "2", "--steps", "3", "--batch-size", "64"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio visiontrain/plain (median)" in result.stdout and "2 x 3" in result.stdout


def test_cifar10_runs_of_both_benches_plot_and_tabulate_together(tmp_path, capsys, monkeypatch):
    import json

    import plot_cifar10

    ours = {"runs": [{"arm": "framework", "seed": s, "epochs": [[1, 30.0, 0.6], [2, 60.0, 0.9]], "total_s": 61.0,
                      "final_acc": 0.9 + s / 100} for s in (1, 2)]}  # fmt: skip
    peer = {"runs": [{"seed": 1, "epochs": [[32.0, 0.55], [64.0, 0.88]], "accuracy": {"0": 0.88, "1": 0.89, "2": 0.895},
                      "wall_s": 66.0}]}  # fmt: skip
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    (tmp_path / "peer.json").write_text(json.dumps(peer))
    plot = tmp_path / "curves.png"
    argv = ["plot_cifar10.py", str(tmp_path / "ours.json"), str(tmp_path / "peer.json"), "--label", "peer=airbench93",
            "--plot", str(plot)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    plot_cifar10.main()
    out = capsys.readouterr().out
    assert "| framework | 2 | 60.0% @ 30 s, 90.0% @ 60 s | **92.0%** | 61 s |" in out
    assert "| airbench93 | 1 | 55.0% @ 32 s, 88.0% @ 64 s | **89.5%** | 66 s |" in out  # the final is TTA level 2
    assert "framework: mean 91.50% (91.0%-92.0%) over 2 seeds, mean wall 61 s (61-61)" in out
    assert plot.stat().st_size > 10_000
