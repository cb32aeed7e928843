"""Export a checkpoint to ONNX or TorchScript, and prove the file computes what PyTorch computes:
``python export.py ckpt_path=<file.ckpt> format=onnx`` (see conf/export.yaml).

The exported file carries the task, class names and input preprocessing (``visiontrain.artifact``), so
``predict.py model_path=<file>`` needs nothing else. How a task's network is exported and checked is the
task's (``visiontrain.serving.base``): classifiers and segmentation networks through the torch.export-based
exporter, detectors through the TorchScript-based one, taking one image of any size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from visiontrain.cli import checks
from visiontrain.errors import UserError
from visiontrain.runs import config, user_errors

log = logging.getLogger("visiontrain")


def export(cfg: DictConfig) -> dict[str, float]:
    """Load the checkpoint, export its network with the artifact's metadata, load the file back and check it
    against PyTorch on the same inputs (``input=`` images, else random ones): a file that computes something
    else is refused in one sentence. Returns the largest differences found."""
    # torch and the rest load here, once the command line is known to be right (see cli/train.py)
    from visiontrain.serving.images import list_inputs, read_image
    from visiontrain.serving.inference import load_checkpoint, load_onnx, load_torchscript

    fmt = cfg.format
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"format={fmt}: choose onnx or torchscript.")
    model = load_checkpoint(cfg.ckpt_path)
    serving = model.serving
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    # by default into this export's own run folder (the checkpoint's run is left as it was)
    path = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / (Path(cfg.ckpt_path).stem + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(cfg.export.check_batch_size, serving.min_check_images)
    images = [read_image(p) for p in list_inputs(cfg.input)[:count]] if cfg.get("input") else None
    examples = serving.export_examples(model, images, count)
    serving.export(model, examples, path, fmt, cfg.export)
    exported = load_onnx(path) if fmt == "onnx" else load_torchscript(path)
    return serving.check_export(model, exported, examples, path, fmt, cfg.export)


@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="export")
@user_errors.report_user_errors
def run(cfg: DictConfig) -> None:
    export(cfg)


def main() -> None:
    """The command: mistyped keys and group options are refused before Hydra starts (visiontrain.cli.checks)."""
    checks.checked_main("export", run)


if __name__ == "__main__":
    main()
