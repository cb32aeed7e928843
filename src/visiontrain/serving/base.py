"""How a trained network is used once trained, per task: the form it runs and is exported in, how images go
in, how an exported file is checked against PyTorch, and how predictions are written.

``predict.py``, ``export.py`` and ``serving/inference.py`` hold no task branches: they ask ``serving_for(task)``
for the task's ``TaskServing``. Its defaults fit networks that take a batch ``(N, C, H, W)`` and return one
tensor per image (classification logits, segmentation logit maps); each task module defines its subclass with
what differs (detection: one image of any size per call, lists of boxes, COCO ids).

A checkpoint runs with the task's test-time augmentation when asked (``tta=`` of predict.py; the same
``visiontrain.tasks.tta`` that the task's test uses); an exported file holds the plain network and runs as it is.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from visiontrain import artifact, kinds
from visiontrain.data import preprocessing
from visiontrain.errors import UserError
from visiontrain.tasks.tta import augmented

log = logging.getLogger("visiontrain")
# what an exported file is called with: a batch (or one image), returning its outputs in order
ExportedCall = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass
class LoadedModel:
    """A trained model ready to run on images, from a checkpoint or an exported file (visiontrain.serving.inference)."""

    task: str
    class_names: list[str]
    preprocessing: dict[str, Any]
    # what the task's serving feeds it (``serving.collate``) -> one output per image
    run: Callable[[Any], Any]
    source: str
    module: torch.nn.Module | None = None  # the network in its exported form, when loaded from a checkpoint
    category_ids: list[int] | None = None  # detection: the dataset's id of each label 1..K (COCO's are sparse)
    splits: dict[str, Any] | None = None  # a checkpoint's split manifest summary: what its training run saw
    temperature: float | None = None  # calibrate=temperature: what its logits are divided by (already applied)

    @property
    def info(self) -> artifact.ArtifactInfo:
        ids = tuple(self.category_ids) if self.category_ids is not None else None
        return artifact.ArtifactInfo(
            self.task, tuple(self.class_names), self.preprocessing, ids, temperature=self.temperature
        )

    @property
    def serving(self) -> TaskServing:
        return serving_for(self.task)


class PredictionWriter(Protocol):
    """Writes one task's predictions for ``predict.py``: ``add`` per image, ``close`` once at the end."""

    def add(self, path: Path, image: torch.Tensor, output: Any) -> None: ...

    def close(self) -> None: ...


class Logits(torch.nn.Module):
    """The task's network alone, returning one logits tensor: what gets exported (no metrics, no
    Trainer attached). torchvision segmentation models return ``{"out": ..., "aux": ...}``. ``temperature``
    (calibrate=temperature): the logits are divided by it, inside the exported graph too."""

    def __init__(self, net: torch.nn.Module, temperature: float | None = None) -> None:
        super().__init__()
        self.net = net
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.net(images)
        output = output["out"] if isinstance(output, dict) else output
        return output / self.temperature if self.temperature is not None else output


class TaskServing:
    """One task's serving (see the module docstring); each kind names its subclass in visiontrain.kinds."""

    task: ClassVar[str] = ""
    # the fewest images an export is checked on
    min_check_images: ClassVar[int] = 1

    # --- running ------------------------------------------------------------------------------
    def exported_form(self, net: nn.Module, temperature: float | None = None) -> nn.Module:
        """The module a checkpoint's network runs and is exported as; ``temperature``: its calibration, if any."""
        return Logits(net, temperature)

    def collate(self, images: list[torch.Tensor]) -> Any:
        """Preprocessed images -> what ``LoadedModel.run`` takes."""
        return torch.stack(images)

    def checkpoint_runner(self, module: nn.Module, device: str, tta: str = "none") -> Callable[[Any], Any]:
        """``run`` of a checkpoint's network (``module``, its exported form) with test-time augmentation ``tta``."""

        @torch.no_grad()
        def run(images: torch.Tensor) -> torch.Tensor:
            return augmented(self.task, tta, module, images.to(device, non_blocking=True)).float().cpu()

        return run

    def exported_runner(self, call: ExportedCall, fixed_batch: int | None) -> Callable[[Any], Any]:
        """``run`` of an exported file; ``fixed_batch``: the batch size it was exported with, if not dynamic."""

        def run(images: torch.Tensor) -> torch.Tensor:
            if fixed_batch is None:
                return call(images)[0]
            # fed in chunks of its batch size, the last one padded with copies of its last image
            outputs = []
            for start in range(0, len(images), fixed_batch):
                chunk = images[start : start + fixed_batch]
                padding = chunk[-1:].expand(fixed_batch - len(chunk), *chunk.shape[1:])
                outputs.append(call(torch.cat([chunk, padding]))[0][: len(chunk)])
            return torch.cat(outputs)

        return run

    # --- exporting ----------------------------------------------------------------------------
    def export_examples(self, model: LoadedModel, images: list[torch.Tensor] | None, count: int) -> Any:
        """What the export is traced with and checked on: ``images`` (uint8, from ``input=``), else random images
        of the model's input size, through the model's own preprocessing (the value range the network sees)."""
        transform = preprocessing.transform(model.preprocessing)
        if images is None:
            generator = torch.Generator().manual_seed(0)
            size = model.preprocessing["size"]
            images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)] * count
        return torch.stack([transform(image) for image in images])

    def export(self, model: LoadedModel, examples: Any, path: Path, fmt: str, options: DictConfig) -> None:
        if fmt == "onnx":
            export_onnx(model, examples, path, options.dynamic_batch)
        else:
            export_torchscript(model, examples, path)

    def check_export(
        self, model: LoadedModel, exported: LoadedModel, examples: Any, path: Path, fmt: str, options: DictConfig
    ) -> dict[str, float]:
        """The exported file must compute what PyTorch computes on the same inputs (a UserError otherwise)."""
        check = examples if fmt == "torchscript" or not options.dynamic_batch else torch.cat([examples, examples[:1]])
        difference = float(np.abs(model.run(check).numpy() - exported.run(check).numpy()).max())
        log.info(
            "exported %s (%s); largest |difference| to PyTorch on %d inputs: %.3g", path, fmt, len(check), difference
        )
        if not difference <= options.tolerance:
            raise UserError(
                f"{path} differs from the PyTorch model by {difference:.3g} (> export.tolerance={options.tolerance})."
            )
        return {"max_abs_difference": difference}

    # --- predictions --------------------------------------------------------------------------
    def writer(self, output: Path, model: LoadedModel, options: DictConfig) -> PredictionWriter:
        raise UserError(f"predict.py cannot yet write {self.task} predictions.")


def serving_for(task: str) -> TaskServing:
    """The serving of the task an artifact names (its kind's, visiontrain.kinds)."""
    return kinds.of(task).part("serving")()


# --- export helpers shared by the tasks -----------------------------------------------------------
# the exporter and the onnxscript / onnx_ir passes it runs log every step at INFO (~15 lines per export)
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporter_logs() -> Iterator[None]:
    """Only the exporter's warnings and errors while exporting, so an export prints our lines alone."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: LoadedModel, batch: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    """Through the torch.export-based exporter (``dynamo=True``); ``dynamic_batch``: a variable batch axis."""
    dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with warnings.catch_warnings(), quiet_exporter_logs():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.module, (batch,), dynamo=True, input_names=["images"], output_names=["logits"],
            dynamic_shapes=dynamic_shapes, verbose=False,
        )  # fmt: skip
        program.save(str(path))
    finish_onnx(model, path, "torch.onnx.export(dynamo=True)")


def finish_onnx(model: LoadedModel, path: Path, exporter: str) -> None:
    """Check the file with onnx.checker and store the artifact's metadata (with exporter and opset) in it."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    artifact.add_to_onnx(proto, model.info, exporter=exporter, opset=opset)
    onnx.save(proto, str(path))
    log.info("ONNX opset %d, exporter %s, checked with onnx.checker", opset, exporter)


def export_torchscript(model: LoadedModel, example: Any, path: Path) -> None:
    """Traced with ``example`` (a batch; for a detector one image, whose size the trace keeps variable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.module, example)
    torch.jit.save(traced, str(path), _extra_files=artifact.torchscript_files(model.info))
