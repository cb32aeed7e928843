"""Any timm classifier by name (``resnet18``, ``convnext_nano``, ``efficientnet_b0``, ...)."""

from __future__ import annotations

from torch import nn

from visiontrain.errors import UserError
from visiontrain.models.weights import load_matching, read_state_dict, strip_wrappers


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
    so a head of another shape stays freshly initialised and the log says what was loaded. For another
    number of input channels the file's first conv is adapted as timm adapts its own downloads."""
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
        state = read_state_dict(weights_file)
        if in_channels != 3:
            adapt_first_conv(state, f"{model.pretrained_cfg.get('first_conv', '')}.weight", in_channels)
        load_matching(model, state, source=str(weights_file))
    return model


def adapt_first_conv(state: dict, key: str, in_channels: int) -> None:
    """Give the file's first conv ``in_channels`` inputs with timm's own rule (channels summed for one,
    repeated and rescaled for more), as ``timm.create_model(pretrained=True, in_chans=...)`` does."""
    from timm.models import adapt_input_conv

    for name, weight in state.items():
        if strip_wrappers(name) == key and weight.ndim == 4 and weight.shape[1] != in_channels:
            state[name] = adapt_input_conv(in_channels, weight)
