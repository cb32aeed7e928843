"""Label issues from a k-fold sweep's out-of-fold predictions: each fold writes its validation fold's probabilities,
the sweep's end ranks the whole pool with cleanlab, ``visiontrain label-issues`` rebuilds it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tests import formats
from tests.conftest import run_cli
from tests.test_cli import run_dirs
from visiontrain.cli.main import main as visiontrain
from visiontrain.errors import UserError
from visiontrain.sweeps import label_issues

POOL = 1200  # training images: with 600 the 3-epoch folds found 4 to 8 of the flips over seeds, with 1200 all 8
FLIPPED = [3, 50, 101, 222, 333, 404, 512, 599]


@pytest.fixture(scope="module")
def kfold_sweep(tmp_path_factory) -> Path:
    """A 3-fold sweep of simple_cnn on the synthetic digits, 8 of whose training labels are another class."""
    root = tmp_path_factory.mktemp("kfold")
    formats.write_mnist(root / "data", n_train=POOL)
    images, labels = formats.class_images(POOL, 28, 1, seed=1)  # the training split write_mnist wrote
    labels = labels.copy()
    labels[FLIPPED] = (labels[FLIPPED] + 3) % 10
    formats.write_idx(root / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels, True)
    args = ["-m", "data.folds=3", "data.fold=0,1,2", "trainer.max_epochs=3", "model.net.width=8",
            "data.batch_size=32", "logger=csv", "extras.print_config=false", "callbacks.progress_bar=null",
            "callbacks.model_summary=null"]  # fmt: skip
    result = run_cli("train.py", args, cwd=root, data_dir=root / "data")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = run_dirs(root, "multiruns")
    return sweep


def test_each_fold_writes_its_validation_folds_probabilities_and_together_they_cover_the_pool(kfold_sweep):
    parts = [np.load(kfold_sweep / str(job) / "val_predictions.npz") for job in range(3)]
    ids = [i for p in parts for i in p["ids"]]
    assert sorted(ids) == sorted(f"train#{i}" for i in range(POOL)) and len(set(ids)) == POOL  # each image once
    for fold, p in enumerate(parts):
        assert int(p["fold"]) == fold and int(p["folds"]) == 3
        assert np.allclose(p["probabilities"].sum(axis=1), 1, atol=1e-5) and p["probabilities"].shape[1] == 10
        assert len(p["labels"]) == len(p["ids"])
    given = {i: int(label) for p in parts for i, label in zip(p["ids"], p["labels"])}
    assert [given[f"train#{i}"] for i in FLIPPED] == [
        (int(v) + 3) % 10 for v in formats.class_images(POOL, 28, 1, seed=1)[1][FLIPPED]
    ]  # the labels as given, flipped ones included


def test_the_sweeps_end_ranks_the_flipped_labels_as_likely_errors(kfold_sweep):
    with (kfold_sweep / label_issues.CSV_NAME).open() as f:
        rows = list(csv.DictReader(f))
    flagged = [int(r["image"].removeprefix("train#")) for r in rows]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["given_label"] != r["suggested_label"] for r in rows[: len(FLIPPED)])
    found = set(flagged) & set(FLIPPED)
    assert len(found) >= len(FLIPPED) // 2, (flagged, FLIPPED)  # most of the planted errors are among the flagged
    scores = [float(r["label_quality"]) for r in rows]
    assert scores == sorted(scores)  # most likely wrong first
    grid = imread(kfold_sweep / label_issues.GRID_NAME)
    assert grid.ndim == 3 and grid.shape[1] > 500
    assert list((kfold_sweep / "tensorboard").glob("events.out.tfevents.*"))


def test_the_command_rebuilds_it_and_refuses_what_is_not_a_kfold_sweep(kfold_sweep, tmp_path, capsys):
    before = (kfold_sweep / label_issues.CSV_NAME).read_text()
    (kfold_sweep / label_issues.CSV_NAME).unlink()
    with pytest.raises(SystemExit) as done:
        visiontrain(["label-issues", str(kfold_sweep)])
    assert done.value.code == 0 and (kfold_sweep / label_issues.CSV_NAME).read_text() == before
    assert capsys.readouterr().out.startswith("label issues: ")
    with pytest.raises(UserError, match="holds no out-of-fold predictions"):
        label_issues.collect(tmp_path)
    # two sweeps' folds mixed: refused
    mixed = tmp_path / "mixed"
    for job in ("0", "1"):
        (mixed / job).mkdir(parents=True)
        (mixed / job / "val_predictions.npz").write_bytes((kfold_sweep / "0" / "val_predictions.npz").read_bytes())
    with pytest.raises(UserError, match="not one k-fold sweep"):
        label_issues.collect(mixed)
