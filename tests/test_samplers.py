"""data.sampler: class-balanced draws for classification, LVIS repeat factor sampling for detection, one epoch shared
out between DDP processes, and one sentence for a sampler the data's task cannot use."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from tests import detection_formats, formats
from visiontrain.data.coco_detection import CocoDetectionDataModule
from visiontrain.data.imagefolder import ImageFolderDataModule
from visiontrain.data.mask_folder import MaskFolderDataModule
from visiontrain.data.pennfudan_detection import PennFudanDataModule
from visiontrain.data.samplers import BalancedSampler, RepeatFactorSampler, ShardedSampler, repeat_factors, run_seed
from visiontrain.errors import UserError


def imbalanced_folder(root: Path, common: int = 450, rare: int = 50) -> Path:
    """``root/{train,val}/{common,rare}/*.png``: 90 % of the training images are of one class."""
    for split, counts in (("train", (common, rare)), ("val", (2, 2))):
        for name, n in zip(("common", "rare"), counts):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((4, 4, 3), i % 256, dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return root


def folder_data(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), image_size=8, batch_size=10, num_workers=0, **kwargs)


# --- balanced -------------------------------------------------------------------------------------
def test_balanced_draws_each_class_about_equally_often(tmp_path, caplog):
    dm = folder_data(imbalanced_folder(tmp_path), sampler="balanced")
    dm.setup("fit")
    labels = [label for _, label in dm.train_set.samples]
    assert Counter(labels) == {0: 450, 1: 50}
    with caplog.at_level(logging.INFO, logger="visiontrain.data.samplers"):
        loader = dm.train_dataloader()
    # one line with the class counts, one with the resulting weights
    assert "training images per class common 450 (90.0%), rare 50 (10.0%)" in caplog.text
    assert "draw weight per image of each class common 1, rare 9" in caplog.text
    sampler = loader.sampler
    for epoch in range(3):
        sampler.set_epoch(epoch)  # what Lightning calls before each epoch
        drawn = list(sampler)
        assert len(drawn) == len(labels)  # an epoch is as long as the training split
        rare = sum(labels[i] for i in drawn) / len(drawn)
        # over 1,000 epochs (500 seeds x 2) of this split the rare share strayed at most 0.074 from one half
        assert abs(rare - 0.5) < 0.1, (epoch, rare)
    # the same epoch draws the same images (every DDP process, a resumed run); another epoch others
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    # the batches of the loader follow the sampler: whole batches, as with shuffling
    images, targets = next(iter(loader))
    assert images.shape == (10, 3, 8, 8) and len(targets) == 10


def test_without_a_sampler_the_training_split_is_shuffled_once_per_epoch(tmp_path):
    dm = folder_data(imbalanced_folder(tmp_path, common=18, rare=2))
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    assert sorted(loader.sampler) == list(range(20))


# --- repeat factors -------------------------------------------------------------------------------
def test_repeat_factors_follow_the_lvis_formula():
    # 100 images: class 1 in every one, class 2 in 10, class 3 in 1; image 99 has no objects
    classes = [{1} for _ in range(100)]
    for i in range(10):
        classes[i] = {1, 2}
    classes[0] = {1, 2, 3}
    classes[99] = set()
    frequency, factors = repeat_factors(classes, threshold=0.1)
    assert frequency == {1: 0.99, 2: 0.1, 3: 0.01}
    r = {c: max(1.0, math.sqrt(0.1 / f)) for c, f in frequency.items()}
    assert r[1] == 1.0 and r[2] == 1.0 and r[3] == pytest.approx(math.sqrt(10))
    # an image's factor: the largest of its classes'; 1 without objects
    assert factors[0] == pytest.approx(math.sqrt(10))
    assert factors[1:99] == [1.0] * 98 and factors[99] == 1.0

    frequency, factors = repeat_factors(classes, threshold=0.5)
    assert factors[5] == pytest.approx(math.sqrt(0.5 / 0.1))  # {1, 2}: class 2's factor
    assert factors[50] == pytest.approx(1.0)  # {1}: f = 0.99 > t


def test_repeat_factor_sampling_draws_rare_images_more_often_with_stochastic_rounding():
    classes = [{1}] * 90 + [{1, 2}] * 10  # class 2 in 10 % of the images
    sampler = RepeatFactorSampler(classes, threshold=0.4, class_names=("common", "rare"), seed=3)
    rare_factor = math.sqrt(0.4 / 0.1)  # 2.0: class 1 (f = 1) keeps factor 1
    assert sampler.factors[95] == pytest.approx(rare_factor) and sampler.factors[0] == 1.0
    assert len(sampler) == round(90 + 10 * rare_factor)

    sampler = RepeatFactorSampler([{1}] * 90 + [{1, 2}] * 10, 0.25, ("common", "rare"), seed=3)
    factor = math.sqrt(0.25 / 0.1)  # 1.58: once or twice an epoch, twice with probability 0.58
    counts = np.zeros(100)
    epochs = 400
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == round(90 + 10 * factor)
        counts += np.bincount(drawn, minlength=100)
    # each image's mean count per epoch is its factor (the rounded epoch is cut or topped up by a draw or so)
    assert counts[:90].mean() / epochs == pytest.approx(1.0, abs=0.02)
    assert counts[90:].mean() / epochs == pytest.approx(factor, abs=0.05)
    assert counts[90:].min() > counts[:90].max()


def coco_with_a_rare_class(root: Path) -> CocoDetectionDataModule:
    """Training images of COCO data: rectangles in 18 images, an ellipse in 2 more."""
    common = detection_formats.write_coco(root / "a", root / "a.json", 18, seed=1, category_ids=[3])
    rare = detection_formats.write_coco(root / "b", root / "b.json", 2, seed=2, category_ids=[17])
    # one images folder and one annotation file holding both
    (root / "train").mkdir()
    data = {"images": [], "annotations": [], "categories": common["categories"]}
    for prefix, part in (("a", common), ("b", rare)):
        offset = 0 if prefix == "a" else 10_000
        for image in part["images"]:
            (root / prefix / image["file_name"]).rename(root / "train" / f"{prefix}{image['file_name']}")
            data["images"].append({**image, "id": image["id"] + offset, "file_name": f"{prefix}{image['file_name']}"})
        for ann in part["annotations"]:
            data["annotations"].append({**ann, "id": ann["id"] + offset, "image_id": ann["image_id"] + offset})
    (root / "train.json").write_text(json.dumps(data))
    detection_formats.write_coco(root / "val", root / "val.json", 4, seed=3)
    return CocoDetectionDataModule(
        train={"images": str(root / "train"), "annotations": str(root / "train.json")},
        val={"images": str(root / "val"), "annotations": str(root / "val.json")},
        batch_size=2,
        num_workers=0,
        sampler="repeat_factor",
        repeat_threshold=0.4,
    )


def test_repeat_factor_sampling_of_coco_data_feeds_aspect_ratio_batches(tmp_path, caplog):
    dm = coco_with_a_rare_class(tmp_path)
    dm.setup("fit")
    assert dm.train_image_classes() == [{1}] * 18 + [{2}] * 2
    with caplog.at_level(logging.INFO, logger="visiontrain.data.samplers"):
        loader = dm.train_dataloader()
    # the frequencies and the factors, one line each; class 2 in 2 of 20 images: sqrt(0.4 / 0.1) = 2
    assert "fraction of the 20 training images holding each class rectangle 0.9, ellipse 0.1" in caplog.text
    assert "repeat factor per class rectangle 1.00, ellipse 2.00; an epoch draws 22 images instead of 20" in caplog.text
    assert isinstance(loader.sampler, ShardedSampler)
    landscape = [w >= h for w, h in dm.train_set.source.image_sizes]
    batches = list(loader.batch_sampler)
    assert sum(len(b) for b in batches) == 22
    # every batch but the last (or two) holds one orientation: the order the sampler gives is grouped
    mixed = [b for b in batches if len({landscape[i] for i in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] in batches[-2:])
    assert Counter(i for b in batches for i in b)[18] == 2  # a rare-class image, twice (its factor is whole)


def test_a_sampler_the_task_cannot_use_is_one_sentence(tmp_path, datasets):
    with pytest.raises(UserError, match=r"data.sampler=balanced draws images by their one class, and this is "
                                        r"detection data; set data.sampler=repeat_factor or null\."):  # fmt: skip
        PennFudanDataModule(str(tmp_path), sampler="balanced")
    with pytest.raises(UserError, match=r"data.sampler=repeat_factor .* and this is classification data; set "
                                        r"data.sampler=balanced or null\."):  # fmt: skip
        folder_data(datasets / "folders", sampler="repeat_factor")
    with pytest.raises(UserError, match=r"and this is segmentation data; set data.sampler=null\."):
        MaskFolderDataModule(str(formats.write_mask_folder(tmp_path / "masks", n=4)), sampler="balanced")
    with pytest.raises(UserError, match=r"data.sampler='weighted' is not a sampler: choose balanced"):
        folder_data(datasets / "folders", sampler="weighted")
    with pytest.raises(UserError, match=r"data.repeat_threshold=0 must be in \(0, 1\]"):
        RepeatFactorSampler([{1}], 0, ("a",), seed=0)


# --- DDP ------------------------------------------------------------------------------------------
def test_ddp_processes_share_one_epoch_and_lightning_keeps_the_sampler(tmp_path):
    """Two processes faked by the trainer's world size and rank: each gets half of the same epoch, disjoint, of one
    length; the loader's sampler is a DistributedSampler, which Lightning leaves in place (it replaces any other
    with its own shuffle, see Lightning's ``_requires_distributed_sampler``)."""
    root = imbalanced_folder(tmp_path, common=45, rare=5)
    shares = []
    for rank in (0, 1):
        dm = folder_data(root, sampler="balanced")
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)
        loader.sampler.set_epoch(4)
        shares.append(list(loader.sampler))
    assert len(shares[0]) == len(shares[1]) == 25
    # together: the whole epoch one process would draw, each draw on exactly one process
    one = BalancedSampler([0] * 45 + [1] * 5, ("common", "rare"), seed=run_seed())
    one.set_epoch(4)
    whole = list(one)
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]


def test_sharded_repeat_factor_epoch_keeps_its_length_and_grouping_on_every_process():
    classes = [{1}] * 30 + [{2}] * 3
    groups = [i % 2 for i in range(33)]
    shares = []
    for rank in range(3):
        sampler = RepeatFactorSampler(classes, 0.5, ("a", "b"), seed=7)
        sharded = ShardedSampler(sampler, num_replicas=3, rank=rank, group_ids=groups, batch_size=2)
        sharded.set_epoch(2)
        shares.append(list(sharded))
    total = len(RepeatFactorSampler(classes, 0.5, ("a", "b"), seed=7))
    assert [len(s) for s in shares] == [math.ceil(total / 3)] * 3  # the same number of steps on every process
    for share in shares:
        pairs = [share[i : i + 2] for i in range(0, len(share) - 2, 2)]  # all but the tail: one group per batch
        assert sum(len({groups[i] for i in pair}) > 1 for pair in pairs) <= 1
