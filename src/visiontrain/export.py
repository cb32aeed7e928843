"""Export a checkpoint to ONNX or TorchScript, and prove the file computes what PyTorch computes:
``python export.py ckpt_path=<file.ckpt> format=onnx`` (see conf/export.yaml).

The exported file carries the task, class names and input preprocessing (ONNX metadata_props /
a TorchScript extra file), so ``predict.py model_path=<file>`` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from visiontrain import preprocessing, runtime
from visiontrain.errors import UserError
from visiontrain.inference import METADATA_KEY, LoadedModel, load_checkpoint, load_onnx, load_torchscript
from visiontrain.predict import list_inputs, read_image
from visiontrain.runtime import CONFIG_DIR

log = logging.getLogger("visiontrain")


def example_batch(model: LoadedModel, input_spec: str | None, batch_size: int) -> torch.Tensor:
    """Real images when ``input`` is given; else random images of the model's input size, both through
    the model's own preprocessing (so the check runs on the value range the model sees)."""
    transform = preprocessing.transform(model.preprocessing)
    if input_spec:
        images = [read_image(path) for path in list_inputs(input_spec)[:batch_size]]
    else:
        generator = torch.Generator().manual_seed(0)
        size = model.preprocessing["size"]
        images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)] * batch_size
    return torch.stack([transform(image) for image in images])


def export_onnx(model: LoadedModel, batch: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    import onnx

    dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.module, (batch,), dynamo=True, input_names=["images"], output_names=["logits"],
            dynamic_shapes=dynamic_shapes,
        )  # fmt: skip
    program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    metadata = {**model.metadata(), "exporter": "torch.onnx.export(dynamo=True)", "opset": opset}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(path))
    log.info("ONNX opset %d, exporter torch.onnx (dynamo), checked with onnx.checker", opset)


def export_torchscript(model: LoadedModel, batch: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.module, batch)
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(model.metadata())})


def export(cfg: DictConfig) -> dict[str, float]:
    fmt = cfg.format
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"format={fmt}: choose onnx or torchscript.")
    model = load_checkpoint(cfg.ckpt_path)
    if model.task == "detection":
        raise UserError(
            "export.py does not export detectors yet; predict.py ckpt_path=... runs them from the checkpoint."
        )
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    path = Path(cfg.output) if cfg.get("output") else Path(cfg.ckpt_path).with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = example_batch(model, cfg.get("input"), cfg.export.check_batch_size)
    if fmt == "onnx":
        export_onnx(model, batch, path, cfg.export.dynamic_batch)
        exported = load_onnx(path)
    else:
        export_torchscript(model, batch, path)
        exported = load_torchscript(path)

    # the exported file must compute what PyTorch computes, on the same inputs
    check = batch if fmt == "torchscript" or not cfg.export.dynamic_batch else torch.cat([batch, batch[:1]])
    expected, got = model.run(check).numpy(), exported.run(check).numpy()
    difference = float(np.abs(expected - got).max())
    print(f"exported {path} ({fmt}); largest |difference| to PyTorch on {len(check)} inputs: {difference:.3g}")
    if not difference <= cfg.export.tolerance:
        raise UserError(
            f"{path} differs from the PyTorch model by {difference:.3g} (> export.tolerance={cfg.export.tolerance})."
        )
    return {"max_abs_difference": difference}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@runtime.report_user_errors
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
