"""Every detector family, briefly trained on the real Penn-Fudan data, exported to ONNX and TorchScript by
``export.py``; prints each export's check (detections paired with PyTorch's, largest differences).

A few optimizer steps only: enough that scores are spread out rather than the near-ties of random
weights, so pairing detections means something; the score threshold is 0, so each image brings its
full ``detections_per_img`` to the check. The check runs on Penn-Fudan images of several sizes
(the files are exported with the first one).

    DATA_DIR=<folder with PennFudanPed> python bench/detector_export.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from visiontrain.cli.export import export
from visiontrain.cli.train import train
from visiontrain.runs.config import compose_config

FAMILIES = {
    "fasterrcnn": "mobilenet_v3_large_320_fpn",
    "maskrcnn": "resnet50_fpn",
    "retinanet": "resnet50_fpn",
    "fcos": "resnet50_fpn",
    "ssdlite": "mobilenet_v3_large",
}
QUIET = ["extras.print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (batches of 2) per family")
    parser.add_argument("--images", type=int, default=4, help="Penn-Fudan images the export is checked on")
    args = parser.parse_args()
    data_dir = Path(os.environ.get("DATA_DIR", "data"))
    images = sorted((data_dir / "PennFudanPed" / "PNGImages").glob("*.png"))[-args.images :]
    if not images:
        raise SystemExit(f"no PennFudanPed/PNGImages under DATA_DIR={data_dir}")
    check_dir = Path(tempfile.mkdtemp())
    for image in images:
        (check_dir / image.name).symlink_to(image.resolve())
    for family, variant in FAMILIES.items():
        run = Path(tempfile.mkdtemp())
        overrides = [f"paths.data_dir={data_dir}", "data=pennfudan", f"model={family}", f"model.net.variant={variant}",
                     "model.net.min_size=160", "model.net.max_size=240", "model.net.box_score_thresh=0.0",
                     "data.num_workers=0", "data.batch_size=2",
                     "trainer.accelerator=cpu", "trainer.max_epochs=1", f"trainer.limit_train_batches={args.steps}",
                     "trainer.limit_val_batches=1", "test=false", "model.val_images_logged=0", *QUIET]  # fmt: skip
        train(compose_config("train", overrides, run / "train"))
        for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt")):
            options = [f"ckpt_path={run / 'train' / 'checkpoints' / 'last.ckpt'}", f"format={fmt}",
                       f"output={run / f'{family}.{suffix}'}", f"input={check_dir}",
                       f"export.check_batch_size={len(images)}", "extras.print_config=false"]  # fmt: skip
            start = time.perf_counter()
            result = export(compose_config("export", options, run / f"export_{fmt}"))
            print(
                f"{family:10s} {variant:27s} {fmt:11s} detections {result['detections']:4d}  "
                f"max |diff| boxes {result['max_box_difference']:.2g} px, scores {result['max_abs_difference']:.2g}, "
                f"masks {result['max_mask_difference']:.2g}  (export and check {time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
