"""Encoder-decoder segmentation networks from segmentation_models_pytorch (UNet, UNet++, FPN,
DeepLabV3+, ...) with any of its encoders."""

from __future__ import annotations

from torch import nn

from visiontrain.errors import UserError
from visiontrain.models.weights import is_file, load_file


def build_smp_model(
    arch: str,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    num_classes: int = 2,
    **kwargs,
) -> nn.Module:
    """``encoder_weights``: smp's name (``imagenet``, downloaded by smp) or a local file loaded into ``encoder``."""
    import segmentation_models_pytorch as smp

    from_file = encoder_weights if is_file(encoder_weights) else None
    try:
        model = smp.create_model(
            arch, encoder_name=encoder_name, encoder_weights=None if from_file else encoder_weights,
            in_channels=in_channels, classes=num_classes, **kwargs,
        )  # fmt: skip
    except KeyError as err:
        raise UserError(f"segmentation_models_pytorch: {err.args[0] if err.args else err}") from err
    except Exception as err:  # hub errors vary by version; all mean the weights could not be had
        if encoder_weights is None:
            raise
        raise UserError(
            f"could not load {encoder_name} encoder weights {encoder_weights!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); without a network, pass a local file instead: "
            "model.net.encoder_weights=/path/to/weights.pth (or null to train from scratch)."
        ) from err
    if from_file:
        load_file(model.encoder, from_file)
    return model
