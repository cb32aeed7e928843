"""The commands exactly as a user types them: exit codes, output folders, one-sentence errors."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import formats
from tests.conftest import PROJECT_ROOT, run_cli

QUIET = ["extras.print_config=false", "callbacks.progress_bar=null", "data.val_size=100"]


def run_dirs(cwd: Path, kind: str = "runs") -> list[Path]:
    return sorted(p for p in (cwd / "outputs" / "train" / kind).iterdir() if p.is_dir())


def assert_one_sentence_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in error_lines[0]


def test_default_command_trains_tests_and_records(tmp_path, datasets):
    result = run_cli("train.py", [*QUIET, "trainer.max_epochs=1"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5  # one epoch on learnable digits
    assert Path(metrics["best_model_path"]).parent == run / "checkpoints"
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "config.yaml").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_console_shows_a_header_one_line_per_epoch_and_the_test(tmp_path, datasets):
    result = run_cli("train.py", ["data.val_size=100", "trainer.max_epochs=2"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_mnist_simple_cnn", run.name)
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 10, lines  # no config tree, no Lightning banners, no tables
    (header,) = [i for i, line in enumerate(lines) if line.startswith("classification: data=mnist, model=simple_cnn (")]
    assert "FLOPs per 1x28x28 image" in lines[header]
    assert lines[header + 1].startswith("on cpu, precision 32-true, max_epochs=2; run dir ")
    assert lines[header + 1].endswith(run.name)
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all("train/loss " in line and "val/acc " in line and " lr " in line for line in epochs)
    (test_line,) = [line for line in lines if line.startswith("test (")]
    best = Path(json.loads((run / "metrics.json").read_text())["best_model_path"])
    assert test_line.startswith(f"test ({best.name}): test/acc ") and best.name in ("epoch_001.ckpt", "epoch_002.ckpt")
    # the per-epoch lines stay in the log too
    log = (run / "train.log").read_text()
    assert all(line in log for line in epochs)


def test_a_run_that_never_started_says_why_once_and_leaves_no_folder(tmp_path):
    result = run_cli("train.py", ["data.download=false"], cwd=tmp_path, data_dir=tmp_path / "no_such_folder")
    assert_one_sentence_error(result, "the data folder", "no_such_folder does not exist")
    assert result.stdout.strip() == "" and not (tmp_path / "outputs").exists()


def test_multirun_one_directory_per_job_and_a_ranked_summary(tmp_path, datasets):
    args = [
        "-m",
        "model.optimizer.lr=0.1,0.001",
        "data.batch_size=32,64",
        *QUIET,
        "trainer.max_epochs=1",
        "test=false",
        "logger=csv",
    ]
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = run_dirs(tmp_path, "multiruns")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    assert all((sweep / job / "metrics.json").is_file() for job in jobs)
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    ranked = [float(row["val/acc_best"]) for row in rows]
    assert ranked == sorted(ranked, reverse=True)
    assert {row["overrides"].split()[0] for row in rows} == {"model.optimizer.lr=0.1", "model.optimizer.lr=0.001"}
    assert "multirun summary" in result.stdout


@pytest.mark.process
def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, datasets):
    args = [*QUIET, "debug=fdr"]
    runs = [
        subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
            cwd=tmp_path,
            env={**os.environ, "DATA_DIR": str(datasets)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in runs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    runs = sorted((tmp_path / "outputs" / "debug" / "runs").iterdir())
    assert len(runs) == 2


def test_missing_data_is_one_sentence_naming_the_folder(tmp_path):
    result = run_cli("train.py", [*QUIET, "data.download=false"], cwd=tmp_path, data_dir=tmp_path / "nowhere")
    assert_one_sentence_error(
        result, "MNIST not found", str(tmp_path / "nowhere" / "MNIST" / "raw"), "train-images-idx3-ubyte"
    )


def test_corrupt_image_is_one_sentence_naming_the_file(tmp_path):
    root = formats.write_imagefolder(tmp_path / "folders")
    broken = sorted((root / "train" / "class_2").iterdir())[3]
    broken.write_bytes(b"not a jpeg")
    args = [
        *QUIET[:2],
        "data=imagefolder",
        f"data.root={root}",
        "data.num_classes=3",
        "data.image_size=32",
        "data.num_workers=1",
        "data.batch_size=4",
        "trainer.max_epochs=1",
    ]
    result = run_cli("train.py", args, cwd=tmp_path)
    assert_one_sentence_error(result, f"cannot decode image {broken}")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model=torchvision", "model.net.name=resnet_9000"], "model.net.name='resnet_9000' is not a torchvision"),
        (["model.net.num_classes=5"], "SimpleCNN outputs (5,) scores per image but MNIST has 10 classes"),
        (["data=cifar10", "data.download=false", "data.data_dir=/nonexistent"], "CIFAR-10 not found"),
    ],
)
def test_bad_configs_are_one_sentence(tmp_path, datasets, overrides, fragment):
    result = run_cli("train.py", [*QUIET, *overrides], cwd=tmp_path, data_dir=datasets)
    assert_one_sentence_error(result, fragment)


def test_eval_command_reproduces_the_run(tmp_path, datasets, trained_classifier):
    trained = json.loads((trained_classifier / "metrics.json").read_text())
    result = run_cli(
        "eval.py",
        ["extras.print_config=false", f"ckpt_path={trained['best_model_path']}", "data.val_size=100"],
        cwd=tmp_path,
        data_dir=datasets,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_run,) = sorted((tmp_path / "outputs" / "eval" / "runs").iterdir())
    evaluated = json.loads((eval_run / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
