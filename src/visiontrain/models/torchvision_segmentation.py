"""torchvision's segmentation networks: FCN, DeepLabV3 and LR-ASPP with their backbones."""

from __future__ import annotations

from torch import nn
from torchvision import models

from visiontrain.errors import UserError
from visiontrain.models.weights import is_file, load_file, load_torchvision_weights

BACKBONES = {
    "fcn": ("resnet50", "resnet101"),
    "deeplabv3": ("resnet50", "resnet101", "mobilenet_v3_large"),
    "lraspp": ("mobilenet_v3_large",),
}


def build_torchvision_segmentation(
    arch: str,
    backbone: str,
    num_classes: int,
    aux_loss: bool = False,
    weights: str | None = None,
    weights_backbone: str | None = None,
) -> nn.Module:
    """``{arch}_{backbone}`` from torchvision; returns a dict ``{"out": logits[, "aux": logits]}`` in forward."""
    choices = BACKBONES.get(arch, ())
    if backbone not in choices:
        raise UserError(f"model.net.backbone={backbone!r} is not available for {arch}; choose one of {list(choices)}.")
    if arch == "lraspp" and aux_loss:
        raise UserError("model.net.aux_loss=true: LR-ASPP has no auxiliary head.")
    name = f"{arch}_{backbone}"
    # torchvision's builders default to ImageNet backbone weights: say None explicitly for "from scratch"
    kwargs = {"weights_backbone": None} if arch == "lraspp" else {"weights_backbone": None, "aux_loss": aux_loss}
    if weights_backbone and not is_file(weights_backbone):
        try:
            kwargs["weights_backbone"] = models.get_model_weights(backbone)[weights_backbone]
        except KeyError as err:
            raise UserError(f"torchvision has no weights {weights_backbone!r} for {backbone}.") from err
    try:
        model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError) as err:  # the backbone's weights could not be fetched
        raise UserError(
            f"could not download torchvision weights {backbone}.{weights_backbone} ({type(err).__name__}); "
            "without a network, pass a local file: model.net.weights_backbone=/path/to/weights.pth (or null)."
        ) from err
    if is_file(weights_backbone):
        load_file(model.backbone, weights_backbone)
    if weights:
        load_torchvision_weights(name, weights, model, option="model.net.weights")
    return model
