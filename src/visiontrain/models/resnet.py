"""torchvision ResNets, with the CIFAR stem (3x3 first conv, no max-pool) for small images."""

from __future__ import annotations

from torch import nn
from torchvision import models

from visiontrain.errors import UserError
from visiontrain.models.weights import load_torchvision_weights

DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101", 152: "resnet152"}


def build_resnet(
    depth: int = 18,
    num_classes: int = 10,
    in_channels: int = 3,
    cifar_stem: bool = True,
    weights: str | None = None,
) -> nn.Module:
    """ResNet-``depth``. ``cifar_stem`` keeps 32 px inputs at full resolution through the first stage;
    ``weights``: a torchvision weights name or a local file (visiontrain.models.weights)."""
    if depth not in DEPTHS:
        raise UserError(f"model.net.depth={depth} is not a torchvision ResNet; choose one of {sorted(DEPTHS)}.")
    name = DEPTHS[depth]
    model = models.get_model(name, weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights:  # after the stem change: a first conv of another shape stays freshly initialised
        load_torchvision_weights(name, weights, model)
    return model
