"""debug=browse: the training samples drawn and the labels counted, as PNGs, JSON and TensorBoard images; no model
is trained. The counts are checked against the tiny datasets' own label files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests import detection_formats, formats
from tests.conftest import QUIET, run_cli
from visiontrain.cli.train import train
from visiontrain.data import label_stats
from visiontrain.data.mask_folder import MaskFolderDataModule
from visiontrain.data.mnist import MNISTDataModule
from visiontrain.data.pennfudan_detection import PennFudanSource
from visiontrain.runs.browse import training_samples

SEGMENTATION_FIGURES = {"training_samples", "pixels_per_class", "images_per_class"}
DETECTION_FIGURES = {"training_samples", "instances_per_class", "boxes_per_image", "box_sizes", "box_aspect_ratios"}


@pytest.fixture
def no_training(monkeypatch):
    """Any fit or test of a Trainer fails the test: browsing never trains."""

    def refuse(*args, **kwargs):
        raise AssertionError("debug=browse started a Trainer's fit or test")

    monkeypatch.setattr(lightning.pytorch.Trainer, "fit", refuse)
    monkeypatch.setattr(lightning.pytorch.Trainer, "test", refuse)


def browsed(run_dir: Path, figures: set[str]) -> dict:
    """Check what a browse run leaves (each figure a decodable PNG and a TensorBoard image, config.yaml, and no
    trace of training); return its label_stats.json."""
    plots = run_dir / "plots"
    for name in figures:
        with Image.open(plots / f"{name}.png") as image:
            image.load()
            assert image.width > 100 and image.height > 100
    assert {p.stem for p in plots.glob("*.png")} == figures
    assert (run_dir / "config.yaml").is_file()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {f"browse/{name}" for name in figures}
    assert events.Tags()["scalars"] == []  # no training step logged anything
    return json.loads((plots / "label_stats.json").read_text())


def idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read()[8:], dtype=np.uint8)  # after the magic number and the count


def test_classification_from_the_command_line(tmp_path, datasets):
    result = run_cli(
        "train.py", [*QUIET, "data.val_size=100", "debug=browse", "browse.images=8"], cwd=tmp_path, data_dir=datasets
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing was trained" in result.stdout + result.stderr
    (run_dir,) = (tmp_path / "outputs" / "debug" / "runs").iterdir()
    stats = browsed(run_dir, {"training_samples", "images_per_class"})

    raw = datasets / "MNIST" / "raw"
    pool, test = idx_labels(raw / "train-labels-idx1-ubyte.gz"), idx_labels(raw / "t10k-labels-idx1-ubyte.gz")
    splits = stats["splits"]
    assert (stats["task"], stats["class_names"]) == ("classification", [str(k) for k in range(10)])
    assert (splits["train"]["images"], splits["val"]["images"], splits["test"]["images"]) == (len(pool) - 100, 100, 200)
    held_out = np.add(splits["train"]["images_per_class"], splits["val"]["images_per_class"])
    assert held_out.tolist() == np.bincount(pool, minlength=10).tolist()
    assert splits["test"]["images_per_class"] == np.bincount(test, minlength=10).tolist()


def test_the_grid_shows_in_memory_images_augmented_as_training_does(datasets):
    # in-memory data is augmented in on_after_batch_transfer, only while a Trainer is training
    dm = MNISTDataModule(str(datasets), 10, 1, 28, batch_size=16, val_size=100, crop_padding=4, hflip=True)
    dm.setup("fit")
    torch.manual_seed(0)
    images, labels = training_samples(dm, 20)  # more than one batch
    torch.manual_seed(0)
    batches = iter(dm.train_dataloader())
    first, second = next(batches), next(batches)
    torch.manual_seed(0)  # the same shuffle, then the same augmentation draws
    next(iter(dm.train_dataloader()))
    augmented = dm.augment(first[0], train=True)
    assert len(images) == 20 and dm.trainer is None
    assert torch.equal(torch.stack(images[:16]), augmented)
    assert not torch.equal(augmented, dm.augment(first[0], train=False))
    assert torch.equal(torch.stack(labels), torch.cat([first[1], second[1][:4]]))


def test_segmentation(make_config, tmp_path, no_training):
    root = formats.write_mask_folder(tmp_path / "masks", n=20)
    (root / "classes.txt").write_text("background\nred\ngreen\n")
    cfg = make_config(
        "train", ["data=mask_folder", f"data.root={root}", "data.image_size=32", "debug=browse", "browse.images=6"]
    )
    assert train(cfg) == {}
    stats = browsed(Path(cfg.paths.output_dir), SEGMENTATION_FIGURES)

    masks = [np.array(Image.open(path)) for path in sorted((root / "masks").glob("*.png"))]
    splits = stats["splits"].values()
    assert sum(s["images"] for s in splits) == sum(s["masks_read"] for s in splits) == 20
    pixels = np.sum([s["pixels_per_class"] for s in splits], axis=0)
    assert pixels.tolist() == np.sum([np.bincount(m.ravel(), minlength=3) for m in masks], axis=0).tolist()
    holding = np.sum([s["images_with_class"] for s in splits], axis=0)
    assert holding.tolist() == [sum(int((m == k).any()) for m in masks) for k in range(3)]
    assert all(s["ignored_pixels"] == 0 for s in splits)


def test_segmentation_masks_beyond_the_cap_are_sampled_evenly(tmp_path):
    root = formats.write_mask_folder(tmp_path / "masks", n=20)
    (root / "classes.txt").write_text("background\nred\ngreen\n")
    dm = MaskFolderDataModule(root=str(root), num_workers=0)
    dm.setup("fit")
    pairs = dm.train_set.pairs
    split = label_stats.segmentation_split(dm.train_set, 3, dm.ignore_index, max_masks=5)
    chosen = label_stats.evenly_spaced(len(pairs), 5)
    assert split["masks_read"] == len(chosen) == 5 and split["images"] == len(pairs) > 5
    assert chosen[0] == 0 and chosen[-1] == len(pairs) - 1
    expected = np.sum([np.bincount(np.array(Image.open(pairs[i][1])).ravel(), minlength=3) for i in chosen], axis=0)
    assert split["pixels_per_class"] == expected.tolist()


def test_detection_with_masks(make_config, tmp_path, no_training):
    shapes = detection_formats.write_coco_splits(tmp_path / "shapes")
    overrides = ["data=coco_detection", "data.masks=true", "debug=browse", "browse.images=5"]
    for split in ("train", "val", "test"):
        overrides += [
            f"data.{split}.images={shapes / split}",
            f"data.{split}.annotations={shapes}/annotations/instances_{split}.json",
        ]
    cfg = make_config("train", overrides)
    assert train(cfg) == {}
    run_dir = Path(cfg.paths.output_dir)
    stats = browsed(run_dir, DETECTION_FIGURES)
    # the default model (simple_cnn) needs keys detection data lacks: browse builds none and saves the config without it
    assert OmegaConf.load(run_dir / "config.yaml").model is None

    assert stats["class_names"] == ["rectangle", "ellipse", "triangle"]
    labels = {3: 0, 17: 1, 90: 2}  # sparse category ids, sorted -> labels 1..3
    for split, counted in stats["splits"].items():
        data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        objects = data["annotations"]
        assert counted["images"] == len(data["images"])
        assert (
            counted["instances_per_class"]
            == np.bincount([labels[a["category_id"]] for a in objects], minlength=3).tolist()
        )
        per_image = [sum(a["image_id"] == image["id"] for a in objects) for image in data["images"]]
        assert counted["boxes_per_image"] == np.bincount(per_image).tolist()
        widths = [a["bbox"][2] for a in objects]
        assert sum(counted["box_width"]["counts"]) == sum(counted["box_area"].values()) == len(objects)
        assert counted["box_width"]["median"] == pytest.approx(np.median(widths))


def test_pennfudan_boxes_come_from_the_masks_alone(tmp_path):
    source = PennFudanSource(detection_formats.write_pennfudan(tmp_path))
    for index in range(len(source)):
        boxes, labels, crowd = label_stats.annotated_objects(source, index)
        target = source.load(index, with_masks=False)[1]  # the image and its mask, as training reads them
        assert torch.equal(boxes, target["boxes"]) and torch.equal(labels, target["labels"]) and not crowd.any()
