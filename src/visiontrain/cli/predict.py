"""Run a trained model on image files: ``python predict.py ckpt_path=<ckpt> input=<file|folder|glob> output=<dir>``.

``model_path=<model.onnx>`` runs an exported model through onnxruntime instead (no Lightning).
What is written is the task's (``visiontrain.serving.base``): classification ``predictions.csv``;
segmentation an index-PNG mask and a colour overlay per image; detection ``predictions.json`` (COCO results
format) and each image with its boxes drawn.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from visiontrain.cli import checks
from visiontrain.errors import UserError
from visiontrain.runs import config, user_errors

log = logging.getLogger("visiontrain")


def predict(cfg: DictConfig) -> dict[str, float]:
    """Load the model (checkpoint or exported file), then per batch of image files: read, preprocess as the
    model was tested, run, and hand each output to the task's writer. An unreadable file is skipped with a
    warning; the rest go on."""
    # torch and the rest load here, once the command line is known to be right (see cli/train.py)
    from rich.progress import track

    from visiontrain.data import manifest, preprocessing
    from visiontrain.serving.images import list_inputs, read_image
    from visiontrain.serving.inference import load_model

    tta = cfg.get("tta", "none")  # test-time augmentation (visiontrain.tasks.tta), checkpoints only
    model = load_model(cfg.get("ckpt_path"), cfg.get("model_path"), device=cfg.predict.device, tta=tta)
    serving = model.serving
    files = list_inputs(str(cfg.input))
    if cfg.get("ckpt_path"):  # say which inputs the model has seen: the checkpoint's split manifest
        overlap = manifest.input_overlap(files, model.splits)
        if overlap:
            log.info(overlap[0].upper() + overlap[1:])
    # the run folder itself by default (with output=<dir>, Hydra's run folder is that folder too: conf/predict.yaml)
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir)
    method = cfg.get("explain", {}).get("method")
    if method:  # class activation maps beside the predictions (visiontrain.serving.explain)
        from visiontrain.serving.explain import ExplanationWriter

        explanations = ExplanationWriter(output, model, method, cfg.explain.get("layer"))
    output.mkdir(parents=True, exist_ok=True)
    transform = preprocessing.transform(model.preprocessing)
    writer = serving.writer(output, model, cfg.predict)
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
        batch = serving.collate([transform(image) for image in images])
        outputs = model.run(batch)
        for path, image, output_of_image in zip(kept, images, outputs):
            writer.add(path, image, output_of_image)
        if method:
            explanations.add(kept, batch, outputs)
        done += len(kept)
    writer.close()
    elapsed = time.perf_counter() - start
    rate = done / elapsed if elapsed > 0 else 0.0
    log.info(
        "%d images read, %d skipped%s; %.1f images/s; predictions in %s",
        done, len(skipped), f" ({', '.join(skipped)})" if skipped else "", rate, output,
    )  # fmt: skip
    return {"images": done, "skipped": len(skipped), "images_per_second": rate}


@hydra.main(version_base="1.3", config_path=config.CONFIG_DIR, config_name="predict")
@user_errors.report_user_errors
def run(cfg: DictConfig) -> None:
    predict(cfg)


def main() -> None:
    """The command: mistyped keys and group options are refused before Hydra starts (visiontrain.cli.checks)."""
    checks.checked_main("predict", run)


if __name__ == "__main__":
    main()
