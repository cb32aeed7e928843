"""Which part of a network is the (pretrained) backbone and which the task's head, for every model family:
staged fine-tuning freezes the first and gives it its own learning rate."""

from __future__ import annotations

from torch import nn

from visiontrain.errors import UserError

# torchvision classifiers name their last layer(s) one of these
CLASSIFIER_HEADS = ("fc", "classifier", "heads", "head")


def backbone_prefix_and_head(net: nn.Module) -> tuple[str | None, tuple[str, ...]]:
    """``(backbone prefix, head prefixes)`` of ``net``'s parameter names: the backbone is everything under
    the prefix, or (prefix None) everything outside the head prefixes."""
    if hasattr(net, "family") and isinstance(getattr(net, "model", None), nn.Module):  # visiontrain's Detector
        # the pretrained network inside the backbone; the FPN (SSDlite: the extra blocks) is built new
        return ("model.backbone.features." if net.family == "ssdlite" else "model.backbone.body."), ()
    if isinstance(getattr(net, "encoder", None), nn.Module) and hasattr(net, "decoder"):  # segmentation_models_pytorch
        return "encoder.", ()
    if isinstance(getattr(net, "backbone", None), nn.Module):  # torchvision segmentation and detection models
        return "backbone.", ()
    if hasattr(net, "get_classifier") and hasattr(net, "pretrained_cfg"):  # timm
        classifier = net.get_classifier()
        names = tuple(f"{name}." for name, module in net.named_modules() if module is classifier and name)
        if names:
            return None, names
    heads = tuple(f"{name}." for name in CLASSIFIER_HEADS if isinstance(getattr(net, name, None), nn.Module))
    if heads:
        return None, heads[:1]
    raise UserError(
        f"finetune=staged does not know which part of {type(net).__name__} is the backbone; it knows torchvision "
        "and timm classifiers, segmentation_models_pytorch and torchvision segmentation models, and detectors."
    )


def in_backbone(net: nn.Module):
    """A predicate on ``net``'s parameter/module names: is this name part of the backbone?"""
    prefix, heads = backbone_prefix_and_head(net)
    if prefix is not None:
        return lambda name: (name + ".").startswith(prefix)
    return lambda name: not any((name + ".").startswith(head) for head in heads)


def backbone_and_head(net: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """``net``'s named parameters split into (backbone, head)."""
    is_backbone = in_backbone(net)
    named = list(net.named_parameters())
    return [(n, p) for n, p in named if is_backbone(n)], [(n, p) for n, p in named if not is_backbone(n)]
