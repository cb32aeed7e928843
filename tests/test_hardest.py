"""The hardest test images (highest loss) as a grid, and the most confused class pairs, per classification test."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from matplotlib.image import imread

from visiontrain.tasks.classification import HardestImages, confused_pairs


def test_the_hardest_images_are_the_highest_losses_over_every_batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(50, 1, 4, 4, generator=generator)
    losses = torch.rand(50, generator=generator)
    labels, preds = torch.arange(50) % 3, (torch.arange(50) + 1) % 3
    hardest = HardestImages(6)
    for start in range(0, 50, 8):  # batches of 8, the last one short
        part = slice(start, start + 8)
        hardest.offer(images[part], preds[part], labels[part], losses[part])
    kept_images, kept_preds, kept_labels, kept_losses = hardest.taken()
    expected = losses.topk(6).indices
    assert kept_losses == pytest.approx(losses[expected].tolist())  # highest first
    assert torch.equal(kept_images, images[expected]) and torch.equal(kept_labels, labels[expected])
    assert torch.equal(kept_preds, preds[expected]) and hardest.losses is None


def test_confused_pairs_are_the_largest_mistakes_with_their_share_of_the_true_class():
    confusion = torch.tensor([[50, 10, 0], [2, 40, 30], [0, 0, 60]])
    assert confused_pairs(confusion, ["cat", "dog", "fox"], count=5) == [
        ("dog", "fox", 30, 30 / 72),
        ("cat", "dog", 10, 10 / 60),
        ("dog", "cat", 2, 2 / 72),
    ]  # only mistakes that occurred
    assert confused_pairs(torch.eye(3, dtype=torch.long) * 5, ["a", "b", "c"]) == []


def test_a_training_run_writes_the_hardest_images_and_its_confused_pairs(trained_classifier):
    grid = imread(trained_classifier / "plots" / "hardest_examples.png")
    assert grid.ndim == 3 and grid.shape[1] > 500  # two rows of eight images
    with (trained_classifier / "confused_pairs.csv").open() as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((trained_classifier / "metrics.json").read_text())
    assert len(rows) <= 5 and (not rows) == (metrics["test/acc"] == 1.0)  # no mistakes, no pairs
    counts = [int(r["images"]) for r in rows]
    assert counts == sorted(counts, reverse=True) and all(r["true"] != r["predicted"] for r in rows)
    assert all(0 < float(r["share_of_true"]) <= 1 for r in rows)
