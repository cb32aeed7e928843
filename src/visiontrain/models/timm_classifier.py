"""Any timm classifier by name (``resnet18``, ``convnext_nano``, ``efficientnet_b0``, ...)."""

from __future__ import annotations

from torch import nn

from visiontrain.errors import UserError
from visiontrain.models.weights import load_file


def build_timm_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    weights_file: str | None = None,
    **kwargs,
) -> nn.Module:
    """timm's ``name`` with a head for ``num_classes``. ``pretrained=true`` downloads timm's published weights
    (Hugging Face hub), or reads ``weights_file`` instead: loaded by name through visiontrain.models.weights,
    so a head or first conv of another shape stays freshly initialised and the log says what was loaded."""
    import timm

    if weights_file and not pretrained:
        raise UserError(f"model.weights_file={weights_file} is set but model.pretrained=false; set it to true.")
    if not timm.is_model(name):
        raise UserError(f"model.name={name!r} is not a timm model; see timm.list_models() for the names.")
    download = pretrained and not weights_file
    try:
        model = timm.create_model(name, pretrained=download, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except Exception as err:  # hub errors vary by version; all mean the weights could not be had
        if not download:
            raise
        raise UserError(
            f"could not download timm weights for {name} ({type(err).__name__}); without a network, pass a local "
            f"file instead: model.weights_file=/path/to/{name}.safetensors (e.g. model.safetensors of timm/{name})."
        ) from err
    if weights_file:
        load_file(model, weights_file)
    return model
