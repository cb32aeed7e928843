"""Task kinds are one table (visiontrain.kinds): a kind the package does not ship, registered from a test module
(tests/task_kind_multilabel.py) with configs in a user's folder, trains, is evaluated and predicts through the
ordinary entry points without any change to the package; a kind not in the table is one sentence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import QUIET, run_cli
from visiontrain import kinds
from visiontrain.errors import UserError
from visiontrain.serving.base import serving_for

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
CONFIGS = {
    "task/multilabel.yaml": "monitor: val/f1\nmonitor_mode: max\n",
    "data/multilabel.yaml": """\
_target_: tests.task_kind_multilabel.MultilabelFolders
root: ???
num_classes: 3
num_channels: 3
image_size: 32
batch_size: 16
eval_batch_size: 64
""",
    "model/multilabel_cnn.yaml": """\
defaults:
  - /task@_global_: multilabel
  - optimizer: adamw
  - _self_

_target_: tests.task_kind_multilabel.MultilabelTask
num_classes: ${data.num_classes}
channels_last: false
net:
  _target_: visiontrain.models.simple_cnn.SimpleCNN
  in_channels: ${data.num_channels}
  num_classes: ${data.num_classes}
  image_size: ${data.image_size}
  width: 8
  hidden: 32
  dropout: 0.0
optimizer:
  lr: 0.003
scheduler: null
""",
}


def write_multilabel_images(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """PNG images of coloured squares on grey, each holding a random non-empty subset of red, green and blue."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(COLOURS) + "\n")
    for split, count in sizes.items():
        (root / split).mkdir()
        rows = []
        for k in range(count):
            image = np.full((32, 32, 3), 128, dtype=np.uint8)
            present = [name for name in COLOURS if rng.random() < 0.5] or [str(rng.choice(list(COLOURS)))]
            for name in present:
                y, x = rng.integers(0, 22, size=2)
                image[y : y + 10, x : x + 10] = COLOURS[name]
            Image.fromarray(image).save(root / split / f"{k}.png")
            rows.append({"file": f"{k}.png", "labels": " ".join(present)})
        with (root / split / "labels.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "labels"])
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture
def multilabel_kind():
    from tests import task_kind_multilabel

    kinds.register(task_kind_multilabel.KIND)
    yield task_kind_multilabel.KIND
    kinds.KINDS.pop("multilabel", None)


def test_a_kind_registered_outside_the_package_trains_evaluates_and_predicts(tmp_path, multilabel_kind, monkeypatch):
    data = write_multilabel_images(tmp_path / "shapes", {"train": 160, "val": 40, "test": 40})
    for name, text in CONFIGS.items():
        (tmp_path / "my_configs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "my_configs" / name).write_text(text)
    # a stored config may build only what is trusted: the user names their own module (visiontrain.artifact)
    monkeypatch.setenv("VISIONTRAIN_TRUSTED_TARGETS", "tests.task_kind_multilabel.")
    args = ["--config-dir=my_configs", "model=multilabel_cnn", "data=multilabel", f"data.root={data}", *QUIET]
    args += ["trainer.max_epochs=6", "logger=csv", "hydra.run.dir=run"]
    trained = run_cli("train.py", args, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/f1"] > 0.7, metrics  # chance (each class present half the time): about 0.5

    checkpoint = next((tmp_path / "run" / "checkpoints").glob("epoch*.ckpt"))
    evaluated = run_cli("eval.py", [f"ckpt_path={checkpoint}", "logger=csv", "hydra.run.dir=eval"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["test/f1"] == pytest.approx(metrics["test/f1"], abs=1e-6)

    predicted = run_cli("predict.py", [f"ckpt_path={checkpoint}", f"input={data / 'test'}", "output=out"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with (tmp_path / "out" / "predictions.csv").open() as f:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(f)}
    with (data / "test" / "labels.csv").open() as f:
        truth = {row["file"]: set(row["labels"].split()) for row in csv.DictReader(f)}
    assert rows.keys() == truth.keys()
    exact = sum(set(rows[name]["labels"].split()) == labels for name, labels in truth.items())
    assert exact >= len(truth) // 2, exact  # chance: 1 in 7

    browsed = run_cli("train.py", [*args[:4], "debug=browse", "hydra.run.dir=browse", *QUIET], tmp_path)
    assert browsed.returncode == 0, browsed.stderr[-3000:]
    drawn = sorted(p.name for p in (tmp_path / "browse").rglob("*.png"))
    assert drawn == ["images_per_class.png", "training_samples.png"]  # the kind's own two drawings


def test_a_kind_not_in_the_table_is_one_sentence():
    with pytest.raises(UserError, match=r"'regression' is not a task kind visiontrain knows \(classification, "):
        serving_for("regression")
    with pytest.raises(UserError, match="is not a task kind"):
        kinds.of("")
