"""Result plots on disk (<run dir>/plots/) for every task, from the same evaluation as the logged metrics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchmetrics.detection import MeanAveragePrecision

from tests import detection_formats, formats
from visiontrain.cli.eval import evaluate
from visiontrain.cli.train import train
from visiontrain.tasks.detection_review import (
    DetectionConfusionMatrix,
    class_average_precisions,
    precision_curves,
)

CLASSIFICATION = ["data=mnist", "data.val_size=100", "data.batch_size=32", "trainer.max_epochs=2"]
CLASSIFICATION += ["trainer.limit_train_batches=4", "trainer.limit_test_batches=2"]


def png_size(path: Path) -> tuple[int, int]:
    """The size of a PNG that decodes in full (a truncated or non-PNG file raises)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_classification_run_writes_curves_confusion_and_per_class_plots_and_eval_writes_them_again(make_config):
    cfg = make_config("train", CLASSIFICATION)
    metrics = train(cfg)
    plots = Path(cfg.paths.output_dir) / "plots"
    # matplotlib sizes in inches x 100 dpi: 10 classes -> a 10 x 9 inch confusion matrix
    assert png_size(plots / "learning_curves.png") == (1100, 400)
    assert png_size(plots / "confusion_matrix.png") == (1000, 900)
    assert png_size(plots / "per_class_accuracy.png") == (700, 500)
    assert png_size(plots / "test_predictions.png")[0] > 0
    assert png_size(plots / "reliability_diagram.png") == (450, 550)
    assert 0.0 <= metrics["test/ece"] <= 1.0
    # the history behind the curves: both epochs, each with train and val loss and the monitored metric
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    history = checkpoint["callbacks"]["LearningCurves"]["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"val/loss", "val/acc"} <= set(history[-1]) and "train/loss" in history[0]
    assert history[-1]["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert history[-1]["val/loss"] == pytest.approx(metrics["val/loss"], abs=1e-6)
    assert history[0]["val/loss"] != history[1]["val/loss"]  # each epoch's own, not the sanity check's

    shutil.rmtree(plots)  # (make_config gives eval the same run folder)
    eval_cfg = make_config("eval", [f"ckpt_path={metrics.get('best_model_path') or _best(cfg)}"])
    evaluate(eval_cfg)
    eval_plots = Path(eval_cfg.paths.output_dir) / "plots"
    assert png_size(eval_plots / "confusion_matrix.png") == (1000, 900)
    assert png_size(eval_plots / "per_class_accuracy.png") == (700, 500)
    assert png_size(eval_plots / "reliability_diagram.png") == (450, 550)
    evaluated = json.loads((Path(eval_cfg.paths.output_dir) / "metrics.json").read_text())
    assert evaluated["test/ece"] == pytest.approx(metrics["test/ece"], abs=1e-6)  # the same weights, the same images
    assert not (eval_plots / "learning_curves.png").exists()  # nothing was trained


def test_the_reliability_diagram_shows_each_bins_accuracy_and_share():
    """Bars at each filled bin's accuracy, the share of images per bin below: 100 images at confidence 0.95 of which
    90 right, 100 at 0.55 of which 40 right."""
    from visiontrain.plots.figures import reliability_figure

    confidences = torch.tensor([0.95] * 100 + [0.55] * 100)
    correct = torch.tensor([1] * 90 + [0] * 10 + [1] * 40 + [0] * 60)
    figure = reliability_figure(confidences, correct, 15, "title")
    top, bottom = figure.axes
    assert sorted(round(bar.get_height(), 6) for bar in top.patches) == [0.4, 0.9]
    assert sorted(round(bar.get_height(), 6) for bar in bottom.patches if bar.get_height() > 0) == [0.5, 0.5]


def _best(cfg) -> str:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["best_model_path"]


def test_segmentation_run_writes_iou_bars_and_pixel_confusion(make_config, datasets):
    root = datasets / "plots_seg"
    if not root.exists():
        formats.write_mask_folder(root)
    cfg = make_config(
        "train",
        ["model=unet", "data=mask_folder", f"data.root={root}", "data.num_classes=3", "data.image_size=32"]
        + ["data.class_names=[background,red,green]"]
        + ["data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0", "trainer.max_epochs=1"],
    )
    train(cfg)
    plots = Path(cfg.paths.output_dir) / "plots"
    assert png_size(plots / "per_class_iou.png") == (700, 290)
    assert png_size(plots / "confusion_matrix.png") == (650, 550)
    assert png_size(plots / "learning_curves.png") == (1100, 400)


def test_detection_run_writes_pr_curves_confusion_and_an_ap_table_that_agrees_with_the_logged_map(
    make_config, tmp_path
):
    shapes = tmp_path / "shapes"
    detection_formats.write_coco_splits(shapes)
    overrides = ["model=fasterrcnn", "data=coco_detection", "data.num_classes=3", "trainer.max_epochs=1"]
    for split in ("train", "val", "test"):
        overrides += [
            f"data.{split}.images={shapes / split}",
            f"data.{split}.annotations={shapes}/annotations/instances_{split}.json",
        ]
    overrides += ["model.net.min_size=64", "model.net.max_size=96", "data.num_workers=0", "data.batch_size=2"]
    overrides += ["model.net.weights_backbone=null", "model.image_score_threshold=0.0"]
    cfg = make_config("train", overrides)
    metrics = train(cfg)
    plots = Path(cfg.paths.output_dir) / "plots"
    assert png_size(plots / "pr_curves.png") == (1200, 500)
    assert png_size(plots / "confusion_matrix.png") == (700, 600)  # 3 classes + background
    with (plots / "per_class_ap.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"class", "category_id", "ap", "ap50", "ap75"}
    for row in rows:
        if float(row["ap"]) >= 0:
            assert float(row["ap"]) == pytest.approx(metrics[f"test/map_class/{row['class']}"], abs=1e-5)
    present = [float(r["ap50"]) for r in rows if float(r["ap50"]) >= 0]
    assert sum(present) / len(present) == pytest.approx(metrics["test/map_50"], abs=1e-5)


def random_detections(generator: torch.Generator, images: int = 12, classes: int = 3):
    """Ground truth and noisy detections of it: shifted copies with random scores and some wrong labels."""
    preds, targets = [], []
    for _ in range(images):
        n = int(torch.randint(1, 5, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * 60
        wh = 10 + torch.rand(n, 2, generator=generator) * 30
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, classes + 1, (n,), generator=generator)
        shifted = boxes + torch.randn(n, 4, generator=generator) * 4
        extra = torch.cat([xy + 50, xy + 50 + wh], dim=1)[:1]  # a false alarm
        wrong = torch.where(torch.rand(n, generator=generator) < 0.2, labels % classes + 1, labels)
        preds.append(
            {
                "boxes": torch.cat([shifted, extra]),
                "scores": torch.rand(n + 1, generator=generator),
                "labels": torch.cat([wrong, labels[:1]]),
            }
        )
        targets.append({"boxes": boxes, "labels": labels})
    return preds, targets


def test_per_class_ap_and_curve_areas_equal_cocoeval_per_class():
    """The figures' numbers come from the one evaluation's precision array; torchmetrics' class_metrics runs
    COCO's evaluation again per class: the two must agree, and each curve's area is its AP."""
    preds, targets = random_detections(torch.Generator().manual_seed(0))
    extended = MeanAveragePrecision(box_format="xyxy", extended_summary=True, backend="pycocotools")
    per_class = MeanAveragePrecision(box_format="xyxy", class_metrics=True, backend="pycocotools")
    extended.update(preds, targets)
    per_class.update(preds, targets)
    result, reference = extended.compute(), per_class.compute()
    ours = class_average_precisions(result["precision"])
    assert torch.allclose(ours["ap"].float(), reference["map_per_class"], atol=1e-6)
    at_50, mean = precision_curves(result["precision"])
    assert torch.allclose(mean.mean(dim=1).float(), reference["map_per_class"], atol=1e-6)
    assert float(at_50.mean(dim=1).mean()) == pytest.approx(float(result["map_50"]), abs=1e-6)
    assert float(ours["ap75"].mean()) == pytest.approx(float(result["map_75"]), abs=1e-6)


def test_detection_confusion_matrix_counts_matches_misses_and_false_alarms():
    matrix = DetectionConfusionMatrix(num_classes=2, score_threshold=0.5)
    target = {
        "boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60.0]]),
        "labels": torch.tensor([1, 2, 2]),
    }
    pred = {
        "boxes": torch.tensor([[0, 0, 10, 11], [20, 20, 30, 31], [80, 80, 90, 90], [50, 50, 60, 60.0]]),
        "labels": torch.tensor([1, 1, 2, 2]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.3]),  # the last is below the threshold: box 3 is missed
    }
    matrix.update([pred], [target])
    expected = torch.tensor(
        [
            [1, 0, 0],  # class 1: found as class 1
            [1, 0, 1],  # class 2: one taken for class 1, one missed
            [0, 1, 0],  # background: one false alarm of class 2
        ]
    )
    assert torch.equal(matrix.compute(), expected)
