"""Segmentation put to use: a logit map per image; ``predict.py`` writes a palette mask and an overlay per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torchvision.utils import draw_segmentation_masks

from visiontrain.data import preprocessing
from visiontrain.plots.colors import class_colors
from visiontrain.serving.base import LoadedModel, TaskServing


class SegmentationServing(TaskServing):
    task = "segmentation"

    def writer(self, output: Path, model: LoadedModel, options: DictConfig) -> SegmentationWriter:
        return SegmentationWriter(output, len(model.class_names), model.preprocessing)


class SegmentationWriter:
    """``<stem>_mask.png`` (palette index PNG, input size) and ``<stem>_overlay.png`` per image."""

    def __init__(self, output: Path, num_classes: int, pipeline: preprocessing.Pipeline) -> None:
        self.output = output
        self.pipeline = pipeline
        self.colors = class_colors(num_classes)
        self.palette = [channel for color in self.colors for channel in color]

    def add(self, path: Path, image: torch.Tensor, logits: torch.Tensor) -> None:
        height, width = image.shape[-2:]
        if self.pipeline["mode"] == "pad":  # drop the padding, then back to the input's size
            inner_h, inner_w = preprocessing.resized_shape(self.pipeline, height, width)
            logits = logits[:, :inner_h, :inner_w]
        logits = torch.nn.functional.interpolate(logits[None], size=(height, width), mode="bilinear")[0]
        classes = logits.argmax(dim=0)
        mask = Image.fromarray(classes.numpy().astype(np.uint8), mode="P")
        mask.putpalette(self.palette + [0] * (768 - len(self.palette)))
        stem = path.stem
        mask.save(self.output / f"{stem}_mask.png")
        present = classes[None] == torch.arange(len(self.colors))[:, None, None]
        overlay = draw_segmentation_masks(image, present, alpha=0.5, colors=self.colors)
        Image.fromarray(overlay.permute(1, 2, 0).numpy()).save(self.output / f"{stem}_overlay.png")

    def close(self) -> None:
        pass
