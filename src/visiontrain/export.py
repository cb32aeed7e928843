"""Export a checkpoint to ONNX or TorchScript, and prove the file computes what PyTorch computes:
``python export.py ckpt_path=<file.ckpt> format=onnx`` (see conf/export.yaml).

The exported file carries the task, class names and input preprocessing (ONNX metadata_props /
a TorchScript extra file), so ``predict.py model_path=<file>`` needs nothing else.

Classifiers and segmentation networks go through the torch.export-based exporter (``dynamo=True``).
Detectors go through the TorchScript-based one (``dynamo=False``): torch.export cannot trace their
data-dependent shapes (the number of boxes after NMS), while torchvision's detectors carry code paths
written for that tracer (image size read as a tensor, ONNX-friendly batching and mask pasting), so one
file takes an image of any height and width.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from visiontrain import cli_checks, preprocessing, runtime
from visiontrain.errors import UserError
from visiontrain.inference import (
    DETECTION_OUTPUTS,
    METADATA_KEY,
    LoadedModel,
    load_checkpoint,
    load_onnx,
    load_torchscript,
)
from visiontrain.predict import list_inputs, read_image
from visiontrain.runtime import CONFIG_DIR

log = logging.getLogger("visiontrain")
# the TorchScript-based exporter's opset for detectors (torchvision's detection ops need >= 11)
DETECTOR_OPSET = 17


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


def detection_examples(input_spec: str | None, count: int) -> list[torch.Tensor]:
    """Images for checking an exported detector: the given ones at their own sizes, else random images of
    two shapes (landscape, portrait), so the check also covers a size other than the one exported with."""
    if input_spec:
        images = [read_image(path) for path in list_inputs(input_spec)[:count]]
    else:
        generator = torch.Generator().manual_seed(0)
        shapes = [(3, 240, 320), (3, 320, 240)]
        images = [torch.randint(0, 256, shapes[i % 2], dtype=torch.uint8, generator=generator) for i in range(count)]
    return [image.to(torch.float32) / 255 for image in images]  # detectors resize and normalise inside


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
    dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with warnings.catch_warnings(), quiet_exporter_logs():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.module, (batch,), dynamo=True, input_names=["images"], output_names=["logits"],
            dynamic_shapes=dynamic_shapes, verbose=False,
        )  # fmt: skip
        program.save(str(path))
    finish_onnx(model, path, "torch.onnx.export(dynamo=True)")


def export_detector_onnx(model: LoadedModel, image: torch.Tensor, path: Path) -> None:
    """One image ``(3, H, W)`` in, with height and width variable; boxes, labels, scores (and masks) out."""
    outputs = [name for name in DETECTION_OUTPUTS if name != "masks" or model.module.net.predicts_masks]
    dynamic_axes = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in outputs}}
    try:
        with warnings.catch_warnings(), quiet_exporter_logs():
            warnings.simplefilter("ignore")  # tracer warnings about Python values: torchvision's code expects them
            torch.onnx.export(
                model.module, (image,), str(path), dynamo=False, opset_version=DETECTOR_OPSET,
                input_names=["image"], output_names=outputs, dynamic_axes=dynamic_axes,
            )  # fmt: skip
    except Exception as err:  # a family or option the tracer cannot follow: say which, in one sentence
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(
            f"the {model.module.net.family} detector cannot be exported to ONNX ({type(err).__name__}: {reason}); "
            "predict.py ckpt_path=... runs it from the checkpoint."
        ) from err
    finish_onnx(model, path, "torch.onnx.export(dynamo=False)")


def finish_onnx(model: LoadedModel, path: Path, exporter: str) -> None:
    """Check the file with onnx.checker and store the metadata (with exporter and opset) in it."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**model.metadata(), "exporter": exporter, "opset": opset})
    onnx.save(proto, str(path))
    log.info("ONNX opset %d, exporter %s, checked with onnx.checker", opset, exporter)


def export_torchscript(model: LoadedModel, example: torch.Tensor, path: Path) -> None:
    """Traced with ``example`` (a batch; for a detector one image, whose size the trace keeps variable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.module, example)
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(model.metadata())})


def match_detections(
    expected: list[dict[str, torch.Tensor]],
    got: list[dict[str, torch.Tensor]],
    score_thresh: float,
    detections_per_img: int,
    score_tolerance: float,
    box_tolerance: float,
) -> dict[str, float]:
    """Pair each detection PyTorch made with the exported model's detection of the same label and the
    nearest box and score, image by image; return the largest differences over the pairs and how many
    detections found no partner within the tolerances.

    Pairs are found by content, not position: detections with (nearly) equal scores may come in either
    order. A detection whose score is within ``score_tolerance`` of a cut-off (the detector's
    ``score_thresh``, or the lowest kept score once ``detections_per_img`` are kept) may rightly be
    kept on one side only, and is not counted as unmatched.
    """

    def edge(prediction: dict[str, torch.Tensor]) -> float:
        full = len(prediction["scores"]) >= detections_per_img
        return float(prediction["scores"].min()) if full else score_thresh

    worst = {"boxes": 0.0, "scores": 0.0, "masks": 0.0, "matched": 0, "unmatched": 0}
    for ref, out in zip(expected, got):
        cutoff = max(edge(ref), edge(out)) + score_tolerance
        free = torch.ones(len(out["scores"]), dtype=torch.bool)
        for k in range(len(ref["scores"])):
            box_difference = (out["boxes"] - ref["boxes"][k]).abs().amax(dim=1)
            score_difference = (out["scores"] - ref["scores"][k]).abs()
            cost = torch.maximum(box_difference / box_tolerance, score_difference / score_tolerance)
            cost[~free | (out["labels"] != ref["labels"][k])] = torch.inf
            best = int(cost.argmin()) if len(cost) else -1
            if best < 0 or not cost[best] <= 1:
                if float(ref["scores"][k]) >= cutoff:
                    worst["unmatched"] += 1
                    if best >= 0 and torch.isfinite(cost[best]):  # report how far off the nearest one is
                        worst["boxes"] = max(worst["boxes"], float(box_difference[best]))
                        worst["scores"] = max(worst["scores"], float(score_difference[best]))
                continue
            free[best] = False
            worst["matched"] += 1
            worst["boxes"] = max(worst["boxes"], float(box_difference[best]))
            worst["scores"] = max(worst["scores"], float(score_difference[best]))
            if "masks" in ref:
                worst["masks"] = max(worst["masks"], float((out["masks"][best] - ref["masks"][k]).abs().max()))
        worst["unmatched"] += int((free & (out["scores"] >= cutoff)).sum())
    return worst


def export_detector(cfg: DictConfig, model: LoadedModel, path: Path) -> dict[str, float]:
    options = cfg.export
    if options.dynamic_batch:
        raise UserError(
            "export.dynamic_batch=true does not apply to detectors: their exported file takes one image of any "
            "size per call; leave it false."
        )
    images = detection_examples(cfg.get("input"), max(options.check_batch_size, 2))
    if cfg.format == "onnx":
        export_detector_onnx(model, images[0], path)
        exported = load_onnx(path)
    else:
        export_torchscript(model, images[0], path)
        exported = load_torchscript(path)
    net = model.module.net
    cut_offs = (net.box_score_thresh, net.detections_per_img)
    worst = match_detections(
        model.run(images), exported.run(images), *cut_offs, options.tolerance, options.box_tolerance
    )
    sizes = ", ".join(sorted({"x".join(map(str, image.shape[1:])) for image in images}))
    log.info(
        "exported %s (%s); on %d images (%s) %d detections matched PyTorch's, %d did not; largest |difference|: "
        "boxes %.3g px, scores %.3g%s", path, cfg.format, len(images), sizes, worst["matched"], worst["unmatched"],
        worst["boxes"], worst["scores"], f", mask probabilities {worst['masks']:.3g}" if worst["masks"] else "",
    )  # fmt: skip
    if worst["unmatched"] or worst["boxes"] > options.box_tolerance or worst["scores"] > options.tolerance:
        raise UserError(
            f"{path} detects differently from the PyTorch model: {worst['unmatched']} detections without a partner "
            f"within export.box_tolerance={options.box_tolerance} px and export.tolerance={options.tolerance}."
        )
    if worst["masks"] > options.mask_tolerance:
        raise UserError(
            f"{path}'s masks differ from the PyTorch model's by {worst['masks']:.3g} "
            f"(> export.mask_tolerance={options.mask_tolerance})."
        )
    return {
        "max_abs_difference": worst["scores"],
        "max_box_difference": worst["boxes"],
        "max_mask_difference": worst["masks"],
        "detections": worst["matched"],
    }


def export(cfg: DictConfig) -> dict[str, float]:
    fmt = cfg.format
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"format={fmt}: choose onnx or torchscript.")
    model = load_checkpoint(cfg.ckpt_path)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    # by default into this export's own run folder (the checkpoint's run is left as it was)
    path = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / (Path(cfg.ckpt_path).stem + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.task == "detection":
        return export_detector(cfg, model, path)
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
    log.info("exported %s (%s); largest |difference| to PyTorch on %d inputs: %.3g", path, fmt, len(check), difference)
    if not difference <= cfg.export.tolerance:
        raise UserError(
            f"{path} differs from the PyTorch model by {difference:.3g} (> export.tolerance={cfg.export.tolerance})."
        )
    return {"max_abs_difference": difference}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@runtime.report_user_errors
def run(cfg: DictConfig) -> None:
    export(cfg)


def main() -> None:
    """The command: mistyped keys and group options are refused before Hydra starts (visiontrain.cli_checks)."""
    cli_checks.checked_main("export", run)


if __name__ == "__main__":
    main()
