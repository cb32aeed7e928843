"""Classification augmentation recipes from ``torchvision.transforms.v2``: the policy chosen by
``data.augment`` (AutoAugment, RandAugment, TrivialAugmentWide, AugMix) and ``data.random_erasing``,
and the per-sample train/eval pipelines of the image-folder datamodules.

The policies take uint8 images (PIL or tensors) and draw their random operations once per call, so
every caller applies them to one image at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from visiontrain.data import preprocessing
from visiontrain.errors import UserError

POLICIES = {
    "autoaugment": v2.AutoAugment,
    "randaugment": v2.RandAugment,
    "trivialaugment": v2.TrivialAugmentWide,
    "augmix": v2.AugMix,
}


def build_policy(augment: str, options: Mapping[str, Mapping[str, Any]] | None = None) -> v2.Transform | None:
    """The v2 policy named by ``data.augment`` with its ``data.augment_options.<name>`` parameters; None for 'none'."""
    if augment in (None, "none"):
        return None
    if augment not in POLICIES:
        raise UserError(f"data.augment={augment!r}: choose one of none, {', '.join(POLICIES)}.")
    params = dict((options or {}).get(augment) or {})
    if augment == "autoaugment" and isinstance(params.get("policy"), str):
        names = {p.name.lower(): p for p in v2.AutoAugmentPolicy}
        if params["policy"].lower() not in names:
            raise UserError(
                f"data.augment_options.autoaugment.policy={params['policy']!r}: choose one of {', '.join(names)}."
            )
        params["policy"] = names[params["policy"].lower()]
    try:
        return POLICIES[augment](**params)
    except TypeError as err:
        raise UserError(f"data.augment_options.{augment}: {err}.") from err


def check_erasing_probability(probability: float) -> float:
    if not 0.0 <= probability <= 1.0:
        raise UserError(f"data.random_erasing={probability} is a probability: give a value between 0 and 1.")
    return probability


def image_classification_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = True,
    crop_scale: Sequence[float] = (0.08, 1.0),
    augment: str = "none",
    augment_options: Mapping[str, Mapping[str, Any]] | None = None,
    random_erasing: float = 0.0,
) -> tuple[v2.Compose, v2.Compose, preprocessing.Pipeline]:
    """Train and eval pipelines for decoded images of any size, and the eval preprocessing spec.

    Train: RandomResizedCrop, flip, policy (on uint8), to float, normalise, RandomErasing (on the
    normalised image, erased to 0 = the mean), the order of torchvision's classification reference.
    Eval: resize the shorter side to image_size / 0.875, centre crop.
    """
    spec = preprocessing.center_crop(image_size, round(image_size / 0.875), mean, std)
    policy = build_policy(augment, augment_options)
    erasing = check_erasing_probability(random_erasing)
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train = [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True)]
    train += [v2.RandomHorizontalFlip()] if hflip else []
    train += [v2.ToImage(), *([policy] if policy else []), *to_float]
    train += [v2.RandomErasing(p=erasing)] if erasing > 0 else []
    evaluate = [v2.Resize(spec["resize"], antialias=True), v2.CenterCrop(image_size), v2.ToImage(), *to_float]
    return v2.Compose(train), v2.Compose(evaluate), spec
