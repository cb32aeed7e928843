"""``model.channels_last``: the memory format of a network's weights and image batches, ``true | false | auto``.

channels_last (NHWC) changes how 4-D tensors are laid out in memory, never their values or shapes: parameter names,
shapes and values, and so checkpoints, exports and results, are those of NCHW (a state dict loads into either
format, and ``load_state_dict`` keeps the format of the network it loads into). oneDNN on CPUs and cuDNN on NVIDIA
GPUs have faster convolution kernels for it for most conv nets; the format is device-agnostic, so the same choice
is correct everywhere.

``auto`` (the default of every model config) turns it on where it measured faster: see :func:`prefers_channels_last`
for the rule and the measurements it rests on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visiontrain.errors import UserError

AUTO = "auto"

# Measured on the project's machine: 2-core AMD EPYC (Zen 3, AVX2), torch 2.14 (oneDNN 3.12), fp32, training steps
# (forward + backward + SGD step) on synthetic tensors, NCHW and channels_last alternated in paired rounds, median of
# per-step CPU time with one thread; speed-up = NCHW time / channels_last time (> 1: channels_last faster). The
# machine was shared with other jobs, so differences under ~5 % are noise. (The README's "channels_last" section
# has the table with images/s and the two-thread wall-clock rounds.)
MEASURED_SPEEDUP: dict[str, float] = {
    "SimpleCNN (MNIST 1x28x28, batch 128)": 1.80,
    "SimpleCNN (3x32x32, batch 128)": 1.41,
    # two threads, wall clock: 1.21; on the real CIFAR-10 images (README) 21.1 -> 25.3 img/s; the issue's: 85 -> 126
    "ResNet-18, CIFAR stem (3x32x32, batch 64)": 1.05,
    "AirbenchNet 32/64/64 (batch 256)": 1.18,  # bench/cifar10_fast.py --step-rates (batch 512): 573 -> 714 img/s
    "AirbenchNet 64/256/256 (batch 128)": 1.11,
    "torchvision ResNet-18 (224, batch 8)": 1.00,
    "timm resnet18 (160, batch 8)": 1.01,
    "torchvision MobileNetV3-Small (224, batch 16)": 1.58,
    "torchvision MobileNetV3-Large (160, batch 8)": 1.40,
    "torchvision EfficientNet-B0 (160, batch 8)": 1.52,
    "torchvision ConvNeXt-Tiny (128, batch 4)": 1.01,
    "torchvision ViT-B/16 (224, batch 2)": 0.98,
    "torchvision DeepLabV3 MobileNetV3-Large (192, batch 4)": 1.24,
    "torchvision DeepLabV3 ResNet-50 (128, batch 2)": 1.27,
    "torchvision LR-ASPP MobileNetV3-Large (192, batch 4)": 0.97,
    "smp Unet ResNet-18 (256, batch 4)": 0.79,
    "smp Unet ResNet-18, depth 4 (96, batch 8; experiment=pennfudan_unet)": 1.00,
    "smp FPN ResNet-18 (192, batch 4)": 0.87,
    "Faster R-CNN MobileNetV3-Large-320 FPN (2 images ~400x500)": 1.01,  # two threads, wall clock: 1.02
    "Faster R-CNN MobileNetV3-Large-320 FPN (experiment=pennfudan_fasterrcnn_scratch, 4 images)": 1.08,
}

# networks that trained slower (or no faster) in channels_last here, by class name: auto leaves them NCHW.
# LR-ASPP: 0.97. segmentation_models_pytorch's encoder-decoders are matched by their module (see
# prefers_channels_last): their decoders concatenate and upsample feature maps, which cost more in NHWC (Unet 0.79,
# FPN 0.87 at 192-256 px; 1.00 at 96 px), so UnetPlusPlus and DeepLabV3Plus, not measured, follow their family.
SLOWER_IN_CHANNELS_LAST: frozenset[str] = frozenset({"LRASPP"})
SLOWER_PACKAGES: tuple[str, ...] = ("segmentation_models_pytorch",)


def checked_option(value: Any) -> bool | str:
    """``model.channels_last`` as given: True, False or "auto"; anything else is one sentence."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", AUTO):
        return {"true": True, "false": False}.get(value.lower(), AUTO)
    raise UserError(f"model.channels_last={value!r}: choose true, false or auto (on where it measured faster).")


def network_name(net: nn.Module) -> str:
    """The class name that decides ``auto``: a visiontrain wrapper's (e.g. the detector's) inner model's."""
    inner = getattr(net, "model", None)
    return type(inner if isinstance(inner, nn.Module) else net).__name__


def prefers_channels_last(net: nn.Module) -> bool:
    """What ``model.channels_last=auto`` resolves to for ``net``: on for convolutional networks (two or more 2-D
    convolutions), which trained 1.0-1.8x faster in NHWC (MEASURED_SPEEDUP), except the architectures that did not
    (SLOWER_IN_CHANNELS_LAST, SLOWER_PACKAGES); off for networks with fewer convolutions (a vision transformer's
    patch embedding: 0.98), where the format buys nothing."""
    inner = getattr(net, "model", None)
    inner = inner if isinstance(inner, nn.Module) else net
    if type(inner).__module__.startswith(SLOWER_PACKAGES) or network_name(net) in SLOWER_IN_CHANNELS_LAST:
        return False
    return sum(isinstance(module, nn.Conv2d) for module in net.modules()) >= 2


def resolve(option: Any, net: nn.Module) -> bool:
    """``model.channels_last`` (true | false | auto) for ``net``: whether its weights and batches are NHWC."""
    option = checked_option(option)
    return prefers_channels_last(net) if option == AUTO else bool(option)


def apply(net: nn.Module, channels_last: bool) -> nn.Module:
    """``net`` with its 4-D parameters and buffers in channels_last (or in the standard contiguous format)."""
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
