"""Resolving torchvision pretrained weights by name, with a clear error when they cannot be fetched."""

from __future__ import annotations

from torch import nn
from torchvision import models

from visiontrain.errors import UserError


def load_torchvision_weights(model_name: str, weights: str, model: nn.Module) -> None:
    """Load ``weights`` (e.g. ``IMAGENET1K_V1`` or ``DEFAULT``) of ``model_name`` into ``model``.

    Tensors whose shape differs (a new classifier head) are left freshly initialised.
    """
    try:
        enum = models.get_model_weights(model_name)
        spec = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError) as err:
        raise UserError(f"torchvision has no weights {weights!r} for {model_name}: {err}") from err
    try:
        state = spec.get_state_dict(progress=False)
    except Exception as err:  # offline, proxy, broken cache: one sentence, not a urllib traceback
        raise UserError(
            f"could not download torchvision weights {model_name}.{weights} ({type(err).__name__}); "
            "without a network, put the file in $TORCH_HOME/hub/checkpoints/ or train with weights=null."
        ) from err
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(compatible, strict=False)
