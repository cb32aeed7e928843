"""Any ``torchvision.models`` classifier by name (``vit_b_16``, ``efficientnet_b0``, ...)."""

from __future__ import annotations

from torch import nn
from torchvision import models

from visiontrain.errors import UserError
from visiontrain.models.weights import load_torchvision_weights


def build_torchvision_classifier(name: str, num_classes: int, weights: str | None = None, **kwargs) -> nn.Module:
    """``weights``: a torchvision weights name or a local file (visiontrain.models.weights)."""
    available = models.list_models(module=models)
    if name not in available:
        raise UserError(f"model.net.name={name!r} is not a torchvision classifier; available: {', '.join(available)}.")
    model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if weights:
        load_torchvision_weights(name, weights, model)
    return model
