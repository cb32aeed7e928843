"""The same kind of mistake gets the same kind of answer: one sentence naming the option and what to do instead,
and nothing left behind by a command that failed before doing anything."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import QUIET, run_cli
from visiontrain.cli.checks import check_overrides
from visiontrain.data.base import download_attempt
from visiontrain.errors import UserError
from visiontrain.runs.config import compose_config
from visiontrain.runs.console import metric_line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: trainer=gpu builds")
def test_a_trainer_that_cannot_be_built_is_one_sentence_and_leaves_no_folder(tmp_path, datasets):
    args = ["trainer=gpu", "data.val_size=100", *QUIET]  # (debug= presets choose the CPU)
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr, result.stderr[-2000:]
    (line,) = [row for row in result.stderr.splitlines() if row.startswith("error: ")]
    assert line.startswith("error: the Trainer cannot be built with trainer.accelerator=gpu, trainer.devices=1")
    assert line.endswith(f"; this machine has no GPU, {os.cpu_count()} CPU cores (trainer=cpu, or trainer=ddp_cpu "
                         "for several processes).")  # fmt: skip
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("override", "instead"),
    [
        ("trainer.gpus=1", "use trainer.accelerator=gpu trainer.devices=<n> (or trainer=gpu)"),
        ("trainer.resume_from_checkpoint=x.ckpt", "use ckpt_path=<file.ckpt> (or resume=<run dir>"),
        ("+trainer.tpu_cores=8", "use trainer.accelerator=tpu trainer.devices=<n>"),
    ],
)
def test_renamed_trainer_arguments_point_to_their_current_names(override, instead):
    with pytest.raises(UserError, match="is no longer an argument of lightning.pytorch.Trainer") as caught:
        check_overrides("train", [override])
    assert instead in str(caught.value)


def test_a_run_folder_as_ckpt_path_means_its_best_checkpoint(copied_classifier, tmp_path, datasets):
    best = Path(json.loads((copied_classifier / "metrics.json").read_text())["best_model_path"]).name
    args = [f"ckpt_path={copied_classifier}", "logger=csv", "hydra.run.dir=eval"]
    result = run_cli("eval.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ckpt_path={copied_classifier} is a run folder: using its best checkpoint, {best}" in result.stdout

    (copied_classifier / "metrics.json").unlink()  # nothing says which is best, and there are two
    shutil.copy(copied_classifier / "checkpoints" / best, copied_classifier / "checkpoints" / "epoch_009.ckpt")
    result = run_cli("predict.py", [f"ckpt_path={copied_classifier}", "input=x.png"], cwd=tmp_path)
    assert result.returncode == 1
    assert f"error: ckpt_path={copied_classifier} is a run folder with several checkpoints; give one of them: " in (
        result.stderr
    )


def test_a_predict_that_fails_before_predicting_leaves_no_output_folder(trained_classifier, tmp_path):
    checkpoint = trained_classifier / "checkpoints" / "last.ckpt"
    result = run_cli("predict.py", [f"ckpt_path={checkpoint}", "input=nowhere", "output=out"], cwd=tmp_path)
    assert result.returncode == 1 and "error: input=nowhere matches no image files." in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_download_leaves_nothing_in_the_users_data_folder(tmp_path):
    data = tmp_path / "MNIST"  # DATA_DIR pointed at the dataset's own folder, which holds the user's files
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "notes.txt").write_text("mine")

    def fetch() -> None:  # what torchvision does offline: makes its folders, then fails
        (data / "MNIST" / "raw").mkdir(parents=True)
        (data / "MNIST" / "raw" / "train-images-idx3-ubyte.gz.part").write_bytes(b"\0")
        raise OSError("[Errno -3] Temporary failure in name resolution")

    reason = download_attempt(True, fetch, data)
    assert reason.startswith("the download failed (OSError: [Errno -3] Temporary failure in name resolution")
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == ["raw", "raw/notes.txt"]


def test_the_console_shows_a_tasks_headline_and_no_coco_markers_as_scores():
    metrics = {"train/loss": 0.51, "val/map": 0.25, "val/map_50": 0.5, "val/map_small": -1.0, "val/mar_100": 0.4,
               "val/map_best": 0.25, "train/loss_classifier": 0.2}  # fmt: skip
    headline = ("loss", "map", "map_50", "map_best")
    assert metric_line(metrics, ("train", "val"), headline) == (
        "train/loss 0.5100  val/map 0.2500  val/map_50 0.5000  val/map_best 0.2500"
    )
    assert "val/map_small n/a" in metric_line(metrics, ("train", "val"))


def test_debug_limit_evaluates_in_training_sized_batches(tmp_path):
    cfg = compose_config("train", ["debug=limit", "data=cifar10", "model=resnet"], tmp_path)
    assert cfg.trainer.limit_val_batches == 3 and cfg.data.eval_batch_size == cfg.data.batch_size
