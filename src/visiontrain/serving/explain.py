"""What a classifier looked at: class activation maps (Grad-CAM and its family) from the ``grad-cam`` package
(pytorch_grad_cam), for ``predict.py explain=gradcam`` (an overlay beside each prediction) and ``eval.py
explain=gradcam`` (a grid of right and wrong test images in plots/).

The map is taken at one layer of the network: found without the user naming it as the last module, in the order
the forward pass finishes them, whose output is still a feature map (N, C, H, W with H, W > 1) — ResNet's
``layer4``, a timm model's last stage, airbench's ``layers``, simple_cnn's last pooled features — or named with
``explain.layer=<dotted name>`` (``layer4.1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from visiontrain.errors import UserError

# explain=<method> -> the package's class
METHODS = {
    "gradcam": "GradCAM",
    "gradcam_plusplus": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",  # class-agnostic: the first principal component of the layer's activations
}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"explain={method}: give one of {', '.join(METHODS)} (or none).")


def target_layer(net: nn.Module, example: torch.Tensor, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose maps are explained: ``name`` (a dotted submodule name), else the last module to finish
    with a spatial feature map when ``example`` (one batch) goes through ``net``."""
    if name:
        try:
            return name, net.get_submodule(name)
        except AttributeError:
            known = [n for n, m in net.named_modules() if n and len(list(m.children())) > 0][-8:]
            raise UserError(
                f"explain.layer={name}: the network has no such module (its last blocks: {', '.join(known)})."
            ) from None
    finished: list[str] = []
    names = {module: module_name for module_name, module in net.named_modules() if module_name}

    def record(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
            finished.append(names[module])

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            net.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise UserError(
            f"{type(net).__name__} has no layer with a spatial feature map to explain; name one with explain.layer=."
        )
    return finished[-1], net.get_submodule(finished[-1])


def class_maps(
    net: nn.Module, images: torch.Tensor, classes: Sequence[int], method: str = "gradcam", layer: str | None = None
) -> np.ndarray:
    """One map per image (N, H, W, the images' own size, each scaled to [0, 1]) of where ``net`` found evidence
    for ``classes[i]`` in image i, at ``layer`` (found from the network when None)."""
    check_method(method)
    return maps_at(net, target_layer(net, images[:1], layer)[1], images, classes, method)


def maps_at(net: nn.Module, module: nn.Module, images: torch.Tensor, classes: Sequence[int], method: str) -> np.ndarray:
    """``class_maps`` at a layer already found (``target_layer``): callers with many batches find it once."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # Lightning evaluates under inference mode, whose tensors autograd refuses: the maps need gradients
    with torch.inference_mode(False), torch.enable_grad():
        images = images.clone()
        with getattr(pytorch_grad_cam, METHODS[method])(model=net, target_layers=[module]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return np.nan_to_num(maps.astype(np.float32))


def overlay(image: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """``cam`` drawn over a network input (C, H, W, normalised; min-max scaled to be seen): uint8 RGB (H, W, 3)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from visiontrain.plots.figures import scaled_for_display

    shown = scaled_for_display(image)
    shown = shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown[:3]
    return show_cam_on_image(shown.permute(1, 2, 0).numpy(), cam, use_rgb=True)


@torch.no_grad()
def test_examples(model: nn.Module, datamodule, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``count`` test images as the network receives them, half it got right and half wrong where there are
    enough of each (in test order), with their predicted and true classes."""
    right: list[tuple] = []
    wrong: list[tuple] = []
    half = count // 2
    model.eval()
    for batch in datamodule.test_dataloader():
        batch = datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(batch, model.device, 0), 0)
        images, labels = batch
        preds = model(images).argmax(dim=1)
        for image, pred, label in zip(images, preds, labels):
            (right if pred == label else wrong).append((image, pred, label))
        if len(right) >= half and len(wrong) >= count - half:
            break
    take_wrong = min(len(wrong), max(count - half, count - len(right)))
    chosen = wrong[:take_wrong] + right[: count - take_wrong]
    images, preds, labels = (torch.stack(t) for t in zip(*chosen))
    return images, preds, labels


def write_test_grid(trainer, model: nn.Module, datamodule, method: str, layer: str | None, count: int = 16) -> None:
    """eval.py: ``plots/explanations.png``, the maps of the predicted class over right and wrong test images."""
    from visiontrain.plots.figures import labelled_grid_figure, publish_figure

    check_method(method)
    images, preds, labels = test_examples(model, datamodule, count)
    name, module = target_layer(model.net, images[:1], layer)
    maps = maps_at(model.net, module, images, preds.tolist(), method)
    overlays = [overlay(image, cam) for image, cam in zip(images, maps)]
    wrong = int((preds != labels).sum())
    title = f"{method} at {name}: {wrong} wrong, {len(images) - wrong} right test images (predicted / true)"
    figure = labelled_grid_figure(overlays, preds.cpu(), labels.cpu(), model.class_names, title=title)
    publish_figure(trainer, "explanations", figure, tag="test/explanations")


class ExplanationWriter:
    """predict.py explain=<method>: ``<output>/explanations/<image name>.png``, the map of the predicted class over
    each image as the network saw it (its input size)."""

    def __init__(self, output, model, method: str, layer: str | None) -> None:
        from pathlib import Path

        if model.module is None:
            raise UserError(
                f"explain={method} needs the network's gradients: give ckpt_path= (an exported file has none)."
            )
        if model.task != "classification":
            raise UserError(f"explain={method} explains classifiers; {model.source} is a {model.task} model.")
        check_method(method)
        self.net, self.method, self.layer = model.module, method, layer
        self.module: nn.Module | None = None  # the layer, found with the first batch and kept for the others
        self.folder = Path(output) / "explanations"  # made with the first image: a refused command leaves none

    def add(self, paths, batch: torch.Tensor, outputs: torch.Tensor) -> None:
        from PIL import Image

        self.folder.mkdir(parents=True, exist_ok=True)
        batch = batch.to(next(self.net.parameters()).device)
        if self.module is None:
            self.module = target_layer(self.net, batch[:1], self.layer)[1]
        maps = maps_at(self.net, self.module, batch, outputs.argmax(dim=1).tolist(), self.method)
        for path, image, cam in zip(paths, batch, maps):
            Image.fromarray(overlay(image, cam)).save(self.folder / f"{path.stem}.png")
