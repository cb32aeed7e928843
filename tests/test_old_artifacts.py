"""Files written by an earlier main keep working: a checkpoint saved before serving, plots and sweeps got their own
folders evaluates to the very numbers its run tested, predicts and exports."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import formats
from tests.conftest import run_cli

# written by main at 6c110cd: `python train.py trainer.max_epochs=1 model.net.width=4 model.net.hidden=16
# data.val_size=50` on formats.write_mnist(n_train=200, n_test=50); its run tested test/loss 2.3090980052948
BEFORE_CONCEPT_HOMES = Path(__file__).parent / "data" / "simple_cnn_6c110cd.ckpt"


def test_a_checkpoint_of_an_earlier_main_evaluates_predicts_and_exports_as_it_tested(tmp_path):
    data = formats.write_mnist(tmp_path / "data", n_train=200, n_test=50)
    checkpoint = shutil.copy(BEFORE_CONCEPT_HOMES, tmp_path / "old.ckpt")
    args = [f"ckpt_path={checkpoint}", "data.download=false", "logger=csv", "hydra.run.dir=eval"]
    evaluated = run_cli("eval.py", args, cwd=tmp_path, data_dir=data)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/loss"] == pytest.approx(2.3090980052948, abs=1e-5)
    assert metrics["test/acc"] == pytest.approx(0.06)

    (tmp_path / "digits").mkdir()
    images, _ = formats.class_images(3, 28, 1, seed=5)
    for k, image in enumerate(images):
        Image.fromarray(np.asarray(image[..., 0], dtype=np.uint8)).save(tmp_path / "digits" / f"{k}.png")
    predicted = run_cli("predict.py", [f"ckpt_path={checkpoint}", "input=digits", "output=out"], cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with (tmp_path / "out" / "predictions.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3

    exported = run_cli("export.py", [f"ckpt_path={checkpoint}", "format=onnx", "output=old.onnx"], cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "old.onnx").stat().st_size > 0
