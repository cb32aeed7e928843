"""Augmentation and normalisation of a whole uint8 batch in one tensor operation, on any device.

Written here because ``torchvision.transforms.v2`` draws one set of random parameters per call:
applied to a batch, every image would get the same crop and the same flip. These draw them per
image, which is what the standard CIFAR recipe (random crop with padding, horizontal flip) means.
The optional policies (``data.augment``) and random erasing are v2 transforms applied image by image
(on the batch's device), since their operations cannot be drawn per image in one tensor operation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from visiontrain.data.augmentation import build_policy, check_erasing_probability


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


def per_image(transform: v2.Transform, images: torch.Tensor) -> torch.Tensor:
    """``transform`` applied to each image of the batch on its own, so each draws its own random parameters."""
    return torch.stack([transform(image) for image in images])


def random_erasing(images: torch.Tensor, probability: float, erase: v2.RandomErasing) -> torch.Tensor:
    """Erase one random rectangle in each image with ``probability``: the coin is tossed for the whole
    batch at once, and only the chosen images go through ``erase`` (which then always erases)."""
    chosen = (torch.rand(images.shape[0], device=images.device) < probability).nonzero().flatten()
    if len(chosen):
        images = images.clone()
        images[chosen] = per_image(erase, images[chosen])
    return images


class BatchAugment:
    """uint8 ``(N, C, H, W)`` -> normalised float32; when training per-image crop/flip, then the optional
    policy on uint8, then normalisation, then optional random erasing (to 0, the mean)."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
        hflip: bool = False,
        augment: str = "none",
        augment_options: Mapping[str, Mapping[str, Any]] | None = None,
        random_erasing: float = 0.0,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.policy = build_policy(augment, augment_options)
        self.erasing_probability = check_erasing_probability(random_erasing)
        self.erase = v2.RandomErasing(p=1.0)

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.crop_padding > 0:
            images = random_crop(images, self.crop_padding)
        if train and self.hflip:
            images = random_hflip(images)
        if train and self.policy is not None:
            images = per_image(self.policy, images)
        if self.mean.device != images.device:
            self.mean = self.mean.to(images.device, non_blocking=True)
            self.std = self.std.to(images.device, non_blocking=True)
        images = (images.float() - self.mean) / self.std
        if train and self.erasing_probability > 0:
            images = random_erasing(images, self.erasing_probability, self.erase)
        return images
