"""Augmentation and normalisation of a whole uint8 batch in one tensor operation, on any device.

Written here because ``torchvision.transforms.v2`` draws one set of random parameters per call:
applied to a batch, every image would get the same crop and the same flip. These draw them per
image, which is what the standard CIFAR recipe (random crop with padding, horizontal flip) means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random ``H x W`` window per image."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch_idx = torch.arange(n, device=images.device)[:, None, None, None]
    channel_idx = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch_idx, channel_idx, rows, cols]


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class BatchAugment:
    """uint8 ``(N, C, H, W)`` -> normalised float32, with per-image crop/flip when training."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], crop_padding: int = 0, hflip: bool = False
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.crop_padding = crop_padding
        self.hflip = hflip

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.crop_padding > 0:
            images = random_crop(images, self.crop_padding)
        if train and self.hflip:
            images = random_hflip(images)
        if self.mean.device != images.device:
            self.mean = self.mean.to(images.device, non_blocking=True)
            self.std = self.std.to(images.device, non_blocking=True)
        return (images.float() - self.mean) / self.std
