"""Run a trained model on image files: ``python predict.py ckpt_path=<ckpt> input=<file|folder|glob> output=<dir>``.

``model_path=<model.onnx>`` runs an exported model through onnxruntime instead (no Lightning).
Classification writes ``predictions.csv``; segmentation an index-PNG mask and a colour overlay per image;
detection ``predictions.json`` (COCO results format) and each image with its boxes drawn.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import track
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from visiontrain import cli_checks, preprocessing, runtime
from visiontrain.data.base import read_rgb
from visiontrain.errors import UserError
from visiontrain.inference import LoadedModel, load_model
from visiontrain.runtime import CONFIG_DIR
from visiontrain.tasks.segmentation import class_colors

log = logging.getLogger("visiontrain")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def list_inputs(spec: str) -> list[Path]:
    """A file, every image in a folder (recursively), or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not files:
        raise UserError(f"input={spec} matches no image files.")
    return files


def read_image(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB; a file that is no image ends in one sentence naming it (``read_rgb``)."""
    return read_rgb(path)


class ClassificationWriter:
    def __init__(self, output: Path, model: LoadedModel, options: DictConfig) -> None:
        self.topk = min(options.topk, len(model.class_names))
        self.names = model.class_names
        self.file = (output / "predictions.csv").open("w", newline="")
        self.csv = csv.writer(self.file)
        header = ["file"]
        for k in range(1, self.topk + 1):
            header += [f"class_{k}", f"probability_{k}"]
        self.csv.writerow(header)

    def add(self, path: Path, image: torch.Tensor, logits: torch.Tensor) -> None:
        probabilities, classes = logits.softmax(dim=-1).topk(self.topk)
        row: list = [str(path)]
        for p, c in zip(probabilities.tolist(), classes.tolist()):
            row += [self.names[c], f"{p:.6f}"]
        self.csv.writerow(row)

    def close(self) -> None:
        self.file.close()


class SegmentationWriter:
    """``<stem>_mask.png`` (palette index PNG, input size) and ``<stem>_overlay.png`` per image."""

    def __init__(self, output: Path, model: LoadedModel, options: DictConfig) -> None:
        self.output = output
        self.spec = model.preprocessing
        self.colors = class_colors(len(model.class_names))
        self.palette = [channel for color in self.colors for channel in color]

    def add(self, path: Path, image: torch.Tensor, logits: torch.Tensor) -> None:
        height, width = image.shape[-2:]
        if self.spec["mode"] == "pad":  # drop the padding, then back to the input's size
            inner_h, inner_w = preprocessing.resized_shape(self.spec, height, width)
            logits = logits[:, :inner_h, :inner_w]
        logits = torch.nn.functional.interpolate(logits[None], size=(height, width), mode="bilinear")[0]
        classes = logits.argmax(dim=0)
        mask = Image.fromarray(classes.numpy().astype(np.uint8), mode="P")
        mask.putpalette(self.palette + [0] * (768 - len(self.palette)))
        stem = path.stem
        mask.save(self.output / f"{stem}_mask.png")
        present = classes[None] == torch.arange(len(self.colors))[:, None, None]
        overlay = draw_segmentation_masks(image, present, alpha=0.5, colors=self.colors)
        Image.fromarray(overlay.permute(1, 2, 0).numpy()).save(self.output / f"{stem}_overlay.png")

    def close(self) -> None:
        pass


class DetectionWriter:
    """``predictions.json`` in the COCO results format (plus the file name; RLE masks for Mask R-CNN) with
    the dataset's own category ids (sparse for COCO data; 1..K otherwise), and a copy of each image with
    its boxes (and masks) drawn and labelled."""

    def __init__(self, output: Path, model: LoadedModel, options: DictConfig) -> None:
        self.output = output
        self.names = model.class_names
        self.category_ids = model.category_ids or list(range(1, len(self.names) + 1))
        self.threshold = options.score_threshold
        self.results: list[dict] = []
        self.image_id = 0

    def add(self, path: Path, image: torch.Tensor, prediction: dict[str, torch.Tensor]) -> None:
        from pycocotools import mask as coco_mask

        self.image_id += 1
        keep = prediction["scores"] >= self.threshold
        boxes, labels, scores = prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep]
        masks = prediction["masks"][keep][:, 0] >= 0.5 if "masks" in prediction else None
        for k, (box, label, score) in enumerate(zip(boxes.tolist(), labels.tolist(), scores.tolist())):
            x0, y0, x1, y1 = box
            entry = {
                "image_id": self.image_id, "file": str(path), "category_id": self.category_ids[label - 1],
                "category_name": self.names[label - 1], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            }  # fmt: skip
            if masks is not None:
                rle = coco_mask.encode(np.asfortranarray(masks[k].numpy().astype(np.uint8)))
                entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            self.results.append(entry)
        drawn = image
        if masks is not None and len(masks):
            drawn = draw_segmentation_masks(drawn, masks, alpha=0.4)
        captions = [f"{self.names[label - 1]} {score:.2f}" for label, score in zip(labels.tolist(), scores.tolist())]
        drawn = draw_bounding_boxes(drawn, boxes, labels=captions, colors="red", width=2)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(self.output / f"{path.stem}_detections.png")

    def close(self) -> None:
        (self.output / "predictions.json").write_text(json.dumps(self.results))


WRITERS = {"classification": ClassificationWriter, "segmentation": SegmentationWriter, "detection": DetectionWriter}


def predict(cfg: DictConfig) -> dict[str, float]:
    model = load_model(cfg.get("ckpt_path"), cfg.get("model_path"), device=cfg.predict.device)
    if model.task not in WRITERS:
        raise UserError(f"predict.py cannot yet write {model.task} predictions.")
    files = list_inputs(str(cfg.input))
    # the run folder itself by default (with output=<dir>, Hydra's run folder is that folder too: conf/predict.yaml)
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    transform = preprocessing.transform(model.preprocessing)
    writer = WRITERS[model.task](output, model, cfg.predict)
    batch_size = cfg.predict.batch_size
    skipped: list[str] = []
    done = 0
    start = time.perf_counter()
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    for paths in track(batches, description="predicting", disable=len(batches) < 2):
        images, kept = [], []
        for path in paths:
            try:
                images.append(read_image(path))
                kept.append(path)
            except UserError as err:  # one unreadable file must not end the run
                skipped.append(str(path))
                log.warning("%s; skipped it", str(err).removesuffix("."))
        if not kept:
            continue
        inputs = [transform(image) for image in images]
        # detectors take a list of variable-size images; the others one stacked batch
        logits = model.run(inputs if model.task == "detection" else torch.stack(inputs))
        for path, image, output_logits in zip(kept, images, logits):
            writer.add(path, image, output_logits)
        done += len(kept)
    writer.close()
    elapsed = time.perf_counter() - start
    rate = done / elapsed if elapsed > 0 else 0.0
    log.info(
        "%d images read, %d skipped%s; %.1f images/s; predictions in %s",
        done, len(skipped), f" ({', '.join(skipped)})" if skipped else "", rate, output,
    )  # fmt: skip
    return {"images": done, "skipped": len(skipped), "images_per_second": rate}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@runtime.report_user_errors
def run(cfg: DictConfig) -> None:
    predict(cfg)


def main() -> None:
    """The command: mistyped keys and group options are refused before Hydra starts (visiontrain.cli_checks)."""
    cli_checks.checked_main("predict", run)


if __name__ == "__main__":
    main()
