"""A trained model, ready to run on images: from a visiontrain checkpoint, an ONNX file or a
TorchScript file, with the class names, task and input preprocessing that travel with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate

from visiontrain.callbacks import CONFIG_KEY
from visiontrain.checkpoint_io import load_checkpoint as read_checkpoint
from visiontrain.errors import UserError
from visiontrain.models.weights import without_pretrained

METADATA_KEY = "visiontrain"  # ONNX metadata_props key / TorchScript extra file holding the JSON below


class Logits(torch.nn.Module):
    """The task's network alone, returning one logits tensor: what gets exported (no metrics, no
    Trainer attached). torchvision segmentation models return ``{"out": ..., "aux": ...}``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.net(images)
        return output["out"] if isinstance(output, dict) else output


DETECTION_OUTPUTS = ("boxes", "labels", "scores", "masks")


class Detections(torch.nn.Module):
    """A detector on ONE image ``(3, H, W)`` of any size, values in [0, 1], returning a tuple
    ``(boxes, labels, scores[, masks])`` with labels ``1..K``: the exported form (ONNX and TorchScript
    take tensors, not lists of dicts). Several images are several calls."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.net([image])[0]
        return tuple(output[name] for name in DETECTION_OUTPUTS if name in output)


def as_detections(outputs: Any) -> dict[str, torch.Tensor]:
    """An exported detector's output tuple (tensors or arrays) -> the ``{boxes, labels, scores[, masks]}`` dict."""
    return {name: torch.as_tensor(value) for name, value in zip(DETECTION_OUTPUTS, outputs)}


@dataclass
class LoadedModel:
    task: str
    class_names: list[str]
    preprocessing: dict[str, Any]
    # normalised batch (N, C, H, W) -> logits; detection: a list of images -> a list of {boxes, labels, scores[, masks]}
    run: Callable[[Any], Any]
    source: str
    module: torch.nn.Module | None = None  # the network (``Logits`` / ``Detections``), when loaded from a checkpoint
    category_ids: list[int] | None = None  # detection: the dataset's id of each label 1..K (COCO's are sparse)

    def metadata(self) -> dict[str, Any]:
        info = {"task": self.task, "class_names": self.class_names, "preprocessing": self.preprocessing}
        if self.category_ids is not None:
            info["category_ids"] = self.category_ids
        return info


def load_checkpoint(path: str | Path, device: str = "cpu") -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    checkpoint = read_checkpoint(path, training_run=False)
    stored = checkpoint.get(CONFIG_KEY) or {}
    if not stored.get("model_resolved") or not stored.get("preprocessing") or not stored.get("task"):
        raise UserError(f"{path} lacks the model config and preprocessing that visiontrain stores; retrain with it.")
    # the checkpoint's weights overwrite any pretrained ones: none are downloaded or read
    task_module = instantiate(without_pretrained(stored["model_resolved"]))
    task_module.load_state_dict(checkpoint["state_dict"])
    detection = stored["task"] == "detection"
    module = (Detections if detection else Logits)(task_module.net).eval().to(device)

    @torch.no_grad()
    def run(images: torch.Tensor | list[torch.Tensor]) -> Any:
        if detection:  # variable-size images in, one dict per image out
            # batched only with images of the same size: a batch pads its images to a common size, which
            # would make an image's detections depend on its neighbours (and differ from the exported file's)
            outputs: list[Any] = [None] * len(images)
            for shape in {tuple(image.shape) for image in images}:
                same = [k for k, image in enumerate(images) if tuple(image.shape) == shape]
                for k, output in zip(same, module.net([images[k].to(device, non_blocking=True) for k in same])):
                    outputs[k] = {key: value.cpu() for key, value in output.items()}
            return outputs
        return module(images.to(device, non_blocking=True)).float().cpu()

    names = checkpoint.get("class_names") or [str(i) for i in range(stored["model_resolved"]["num_classes"])]
    category_ids = checkpoint.get("category_ids", list(range(1, len(names) + 1))) if detection else None
    return LoadedModel(stored["task"], list(names), stored["preprocessing"], run, str(path), module, category_ids)


def load_onnx(path: str | Path) -> LoadedModel:
    import onnxruntime

    path = Path(path)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise UserError(f"onnxruntime cannot load {path} ({type(err).__name__}: {str(err)[:200]}).") from err
    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if meta is None:
        raise UserError(f"{path} carries no visiontrain metadata; export it with export.py.")
    info = json.loads(meta)
    model_input = session.get_inputs()[0]
    fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None

    def run_detector(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        # one image (3, H, W) of any size per call
        return [
            as_detections(session.run(None, {model_input.name: image.numpy().astype(np.float32)})) for image in images
        ]

    def run(images: torch.Tensor) -> torch.Tensor:
        array = images.numpy().astype(np.float32)
        if fixed_batch is None:
            return torch.from_numpy(session.run(None, {model_input.name: array})[0])
        # exported without a dynamic batch axis: feed chunks of its batch size, the last one padded
        outputs = []
        for start in range(0, len(array), fixed_batch):
            chunk = array[start : start + fixed_batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - len(chunk), axis=0)])
            outputs.append(session.run(None, {model_input.name: padded})[0][: len(chunk)])
        return torch.from_numpy(np.concatenate(outputs))

    return loaded_from_metadata(info, run_detector if info["task"] == "detection" else run, path)


def loaded_from_metadata(info: dict[str, Any], run: Callable[[Any], Any], path: Path) -> LoadedModel:
    """An exported file's model, described by the metadata ``LoadedModel.metadata`` wrote into it."""
    category_ids = info.get("category_ids") if info["task"] == "detection" else None
    if info["task"] == "detection" and category_ids is None:
        category_ids = list(range(1, len(info["class_names"]) + 1))
    return LoadedModel(info["task"], info["class_names"], info["preprocessing"], run, str(path), None, category_ids)


def load_torchscript(path: str | Path) -> LoadedModel:
    path = Path(path)
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        raise UserError(f"{path} is not a TorchScript file ({type(err).__name__}).") from err
    if not extra[f"{METADATA_KEY}.json"]:
        raise UserError(f"{path} carries no visiontrain metadata; export it with export.py.")
    info = json.loads(extra[f"{METADATA_KEY}.json"])

    @torch.no_grad()
    def run(images: torch.Tensor | list[torch.Tensor]) -> Any:
        if info["task"] == "detection":  # one image per call, as exported
            return [as_detections(scripted(image)) for image in images]
        return scripted(images)

    return loaded_from_metadata(info, run, path)


def load_model(ckpt_path: str | None = None, model_path: str | None = None, device: str = "cpu") -> LoadedModel:
    """From a checkpoint (``ckpt_path``) or an exported file (``model_path``: .onnx, or TorchScript .pt)."""
    if bool(ckpt_path) == bool(model_path):
        raise UserError("give exactly one of ckpt_path=<.ckpt> or model_path=<.onnx | TorchScript .pt>.")
    if ckpt_path:
        return load_checkpoint(ckpt_path, device)
    if not Path(model_path).is_file():
        raise UserError(f"model file {model_path} does not exist.")
    return load_onnx(model_path) if str(model_path).endswith(".onnx") else load_torchscript(model_path)
