"""A trained model, ready to run on images: from a visiontrain checkpoint, an ONNX file or a TorchScript
file, with the class names, task and input preprocessing that travel with it (``visiontrain.artifact``).
How it runs is its task's (``visiontrain.serving.base``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate

from visiontrain import artifact
from visiontrain.errors import UserError
from visiontrain.models.weights import without_pretrained
from visiontrain.serving.base import LoadedModel, serving_for


def loaded(info: artifact.ArtifactInfo, run: Callable[[Any], Any], source: Path, module: Any = None) -> LoadedModel:
    ids = list(info.category_ids) if info.category_ids is not None else None
    splits = dict(info.splits) or None  # a checkpoint's: what its training run saw (exports carry none)
    return LoadedModel(
        info.task, list(info.class_names), info.preprocessing, run, str(source), module, ids, splits, info.temperature
    )


def load_checkpoint(path: str | Path, device: str = "cpu", tta: str = "none") -> LoadedModel:
    """Rebuild the network from the model config the checkpoint carries and load its weights; ``tta``: the task's
    test-time augmentation to run it with (visiontrain.tasks.tta)."""
    path = artifact.checkpoint_file(path)  # a run folder: its best checkpoint
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    checkpoint = artifact.load_checkpoint(path, training_run=False)
    info = checkpoint.info
    if info is None or not info.configs.get("model_resolved") or not info.preprocessing or not info.task:
        raise UserError(f"{path} lacks the model config and preprocessing that visiontrain stores; retrain with it.")
    # the checkpoint's weights overwrite any pretrained ones: none are downloaded or read
    task_module = instantiate(without_pretrained(info.configs["model_resolved"]))
    serving = serving_for(info.task)  # after the model: a kind defined outside visiontrain registers on its import
    task_module.set_tta(tta)  # a mode the task lacks ends here, before any image is read
    task_module.load_state_dict(checkpoint.content["state_dict"])
    # calibrate=temperature: the temperature fitted with these weights, divided out of their logits
    temperature = float(task_module.temperature) if getattr(task_module, "calibrating", False) else None
    module = serving.exported_form(task_module.net, temperature).eval().to(device)
    info = dataclasses.replace(info, temperature=temperature)
    return loaded(info, serving.checkpoint_runner(module, device, task_module.tta), path, module)


def load_onnx(path: str | Path) -> LoadedModel:
    import onnxruntime

    path = Path(path)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise UserError(f"onnxruntime cannot load {path} ({type(err).__name__}: {str(err)[:200]}).") from err
    info = artifact.from_onnx(session.get_modelmeta().custom_metadata_map, str(path))
    model_input = session.get_inputs()[0]
    fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None

    def call(images: torch.Tensor) -> list[torch.Tensor]:
        outputs = session.run(None, {model_input.name: images.numpy().astype(np.float32)})
        return [torch.from_numpy(output) for output in outputs]

    return loaded(info, serving_for(info.task).exported_runner(call, fixed_batch), path)


def load_torchscript(path: str | Path) -> LoadedModel:
    path = Path(path)
    scripted, info = artifact.load_torchscript(path)

    @torch.no_grad()
    def call(images: torch.Tensor) -> list[torch.Tensor]:
        outputs = scripted(images)
        return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]

    return loaded(info, serving_for(info.task).exported_runner(call, None), path)


def load_model(
    ckpt_path: str | None = None, model_path: str | None = None, device: str = "cpu", tta: str = "none"
) -> LoadedModel:
    """From a checkpoint (``ckpt_path``) or an exported file (``model_path``: .onnx, or TorchScript .pt); test-time
    augmentation ``tta`` with checkpoints only: an exported file holds the plain network and runs as it is."""
    if bool(ckpt_path) == bool(model_path):
        raise UserError("give exactly one of ckpt_path=<.ckpt> or model_path=<.onnx | TorchScript .pt>.")
    if ckpt_path:
        return load_checkpoint(ckpt_path, device, tta)
    if tta != "none":
        raise UserError(
            f"tta={tta} runs with checkpoints only (exported files hold the network without test-time augmentation); "
            "give ckpt_path=<.ckpt>, or leave out tta."
        )
    if not Path(model_path).is_file():
        raise UserError(f"model file {model_path} does not exist.")
    return load_onnx(model_path) if str(model_path).endswith(".onnx") else load_torchscript(model_path)
