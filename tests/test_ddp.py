"""DDP under Hydra (gloo on CPU): one folder per run or job, rank 0 writes, metrics synchronised across ranks."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli, run_process
from tests.test_cli import run_dirs

RUN = [
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.val_size=100",
    "model.net.width=8",
    "trainer.max_epochs=1",
]


@pytest.mark.process
def test_ddp_run_writes_one_directory_and_synchronised_metrics(tmp_path, datasets):
    # data.batch_size is per process: 2 x 16 takes the same optimizer steps as 1 x 32
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp.mkdir(), single.mkdir()
    args = [*RUN, "trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=16"]
    result = run_process("train.py", args, cwd=ddp, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(ddp)
    metrics = json.loads((run / "metrics.json").read_text())
    # rank 0 writes the records; the second process only has its own log
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    assert {p.name for p in run.iterdir()} == {
        ".hydra",
        "checkpoints",
        "tensorboard",
        "config.yaml",
        "confused_pairs.csv",
        "metrics.json",
        "plots",
        "splits.json",
        "train.log",
        "train_ddp_process_1.log",
    }
    assert len(list((run / "tensorboard").glob("hparams.yaml"))) == 1
    # figures by rank 0 only, the test's from the metrics synchronised over both processes
    assert {p.name for p in (run / "plots").iterdir()} >= {"learning_curves.png", "confusion_matrix.png"}

    # the test metrics cover the whole test split, not rank 0's half: one process on the same weights agrees
    result = run_process(
        "eval.py",
        ["extras.print_config=false", f"ckpt_path={metrics['best_model_path']}", "data.val_size=100"],
        cwd=ddp,
        data_dir=datasets,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (evaluated,) = sorted((ddp / "outputs" / "eval" / "runs").iterdir())
    evaluated = json.loads((evaluated / "metrics.json").read_text())
    for name in ("test/acc", "test/loss", "test/acc_class/3"):
        assert metrics[name] == pytest.approx(evaluated[name], abs=1e-5), name

    # and training on 2 processes reaches what 1 process does with the same global batch (the data order differs)
    result = run_cli("train.py", [*RUN, "data.batch_size=32"], cwd=single, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (single_run,) = run_dirs(single)
    reference = json.loads((single_run / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(reference["test/acc"], abs=0.05)


@pytest.mark.process
def test_multirun_of_ddp_jobs_one_folder_per_job(tmp_path, datasets):
    args = ["-m", *RUN, "trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=16", "seed=1,2", "logger=csv"]
    result = run_process("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    # the extra DDP processes ran their job, not a sweep of their own
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == ["multiruns"]
    (sweep,) = run_dirs(tmp_path, "multiruns")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, seed in (("0", 1), ("1", 2)):
        assert json.loads((sweep / job / "metrics.json").read_text())["test/acc"] > 0.5
        assert (sweep / job / "train_ddp_process_1.log").is_file()
        assert f"seed: {seed}" in (sweep / job / "config.yaml").read_text()
    with (sweep / "summary.csv").open() as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["done", "done"]
