"""Box- and mask-aware augmentation for detection, built from ``torchvision.transforms.v2``.

Samples are ``(tv_tensors.Image, target)`` with ``target["boxes"]`` a ``tv_tensors.BoundingBoxes``
(XYXY, pixels) and optionally ``target["masks"]`` a ``tv_tensors.Mask`` (one channel per instance):
every geometric transform moves boxes and masks with the pixels. Images leave as float in [0, 1]
and are not resized or normalised here: torchvision detectors do both themselves (``min_size``,
``max_size``, ``image_mean``/``image_std`` of the model), and predictions come back in the
coordinates of the image given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

# the image becomes float in [0, 1]; boxes and masks keep their dtypes
TO_FLOAT = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
# per-instance entries of a target that must be dropped together with a dropped box (masks are found by shape)
PER_INSTANCE_KEYS = ("labels", "iscrowd", "area")


def per_instance_entries(sample) -> tuple[torch.Tensor, ...]:
    """``labels_getter`` of SanitizeBoundingBoxes: everything indexed like the boxes."""
    target = sample[1]
    return tuple(target[key] for key in PER_INSTANCE_KEYS if key in target)


def detection_train_transform(
    hflip: bool = True, scale_jitter: Sequence[float] | None = (0.75, 1.25), photometric: bool = True
) -> v2.Compose:
    """Photometric distortion, horizontal flip and scale jitter (zoom in/out about the centre on the same
    canvas); boxes cut by the image border are clamped, and boxes left smaller than a pixel are dropped
    together with their labels and masks."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if photometric:
        steps.append(v2.RandomPhotometricDistort(p=0.5))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if scale_jitter:
        low, high = scale_jitter
        steps += [v2.RandomAffine(degrees=0.0, scale=(low, high)), v2.ClampBoundingBoxes()]
    steps += [v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=per_instance_entries), TO_FLOAT, v2.ToPureTensor()]
    return v2.Compose(steps)


def detection_eval_transform() -> v2.Compose:
    return v2.Compose([v2.ToImage(), TO_FLOAT, v2.ToPureTensor()])
