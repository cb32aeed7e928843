"""The evaluation-time input pipeline as plain data, so it travels inside checkpoints and exported
models: ``predict.py`` rebuilds exactly what the datamodule fed the network at test time.

A pipeline is a dict: ``channels`` (1 or 3), ``mode`` and ``size`` (plus ``resize`` for centre crops),
``mean``/``std`` (of pixel values in [0, 1]) and, for padded inputs, ``pad_fill`` (image padding).
Modes: ``exact`` (resize to size x size), ``center_crop`` (shorter side to ``resize``, centre crop
``size``), ``pad`` (longer side to ``size``, pad right/bottom to a square), ``as_is`` (the image at its
own size, values scaled to [0, 1]: detectors resize and normalise inside the model).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

Pipeline = dict[str, Any]


def exact(channels: int, size: int, mean, std) -> Pipeline:
    return {"channels": channels, "mode": "exact", "size": size, "mean": list(mean), "std": list(std)}


def center_crop(size: int, resize: int, mean, std) -> Pipeline:
    return {"channels": 3, "mode": "center_crop", "size": size, "resize": resize, "mean": list(mean), "std": list(std)}


def pad(size: int, mean, std) -> Pipeline:
    return {"channels": 3, "mode": "pad", "size": size, "mean": list(mean), "std": list(std)}


def as_is() -> Pipeline:
    return {"channels": 3, "mode": "as_is"}


def resized_shape(pipeline: Pipeline, height: int, width: int) -> tuple[int, int]:
    """For ``pad``: the (height, width) the image occupies inside the padded square."""
    scale = pipeline["size"] / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def transform(pipeline: Pipeline) -> v2.Compose:
    """uint8 image tensor ``(C, H, W)`` (any size, RGB or grey) -> normalised float tensor."""
    if pipeline["mode"] == "as_is":
        return v2.Compose([v2.ToDtype(torch.float32, scale=True)])
    size = pipeline["size"]
    steps: list = [v2.Grayscale(num_output_channels=1)] if pipeline["channels"] == 1 else []
    if pipeline["mode"] == "exact":
        steps.append(v2.Resize((size, size), antialias=True))
    elif pipeline["mode"] == "center_crop":
        steps += [v2.Resize(pipeline["resize"], antialias=True), v2.CenterCrop(size)]
    elif pipeline["mode"] == "pad":
        steps += [v2.Resize(size=None, max_size=size, antialias=True), PadRightBottom(size)]
    else:
        raise ValueError(f"unknown preprocessing mode {pipeline['mode']!r}")
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pipeline["mean"], pipeline["std"])]
    return v2.Compose(steps)


class PadRightBottom:
    """Zero-pad a uint8 image on the right and bottom to ``size`` x ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        return v2.functional.pad(image, [0, 0, self.size - width, self.size - height], fill=0)
