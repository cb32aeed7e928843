"""Detectors exported (ONNX through onnxruntime, TorchScript) detect what PyTorch detects, and predict.py
writes the same COCO results through the exported file as through the checkpoint, with the dataset's ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from tests import detection_formats
from visiontrain.cli.export import export
from visiontrain.cli.predict import predict
from visiontrain.cli.train import train
from visiontrain.errors import UserError
from visiontrain.runs.config import compose_config
from visiontrain.serving.detection import match_detections

QUIET = ["extras.print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]
# a few optimizer steps on small images: scores spread out (not the ties of random weights), yet fast
SHORT_RUN = ["data.num_workers=0", "data.batch_size=2", "trainer.accelerator=cpu", "trainer.max_epochs=1",
             "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "test=false", "model.val_images_logged=0",
             "model.optimizer.lr=0.02", "model.net.min_size=96", "model.net.max_size=128",
             "model.net.box_score_thresh=0.0", "model.net.detections_per_img=20",
             "+model.net.rpn_pre_nms_top_n_test=100", "+model.net.rpn_post_nms_top_n_test=100"]  # fmt: skip


def trained_checkpoint(root: Path, data: list[str], model: str) -> Path:
    cfg = compose_config("train", [*data, f"model={model}", *SHORT_RUN, *QUIET], root / model)
    train(cfg)
    return root / model / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """COCO-format shapes with sparse category ids (3, 17, 90)."""
    root = tmp_path_factory.mktemp("shapes")
    return detection_formats.write_coco_splits(root, n_train=12, n_val=2, n_test=4)


def coco_data(root: Path) -> list[str]:
    out = ["data=coco_detection", "data.num_classes=3"]
    for split in ("train", "val"):
        out += [
            f"data.{split}.images={root / split}",
            f"data.{split}.annotations={root}/annotations/instances_{split}.json",
        ]
    return out


@pytest.fixture(scope="module")
def faster_rcnn(tmp_path_factory, shapes) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("frcnn"), coco_data(shapes), "fasterrcnn")


def export_config(ckpt: Path, output: Path, *overrides: str):
    overrides = [f"ckpt_path={ckpt}", f"output={output}", "extras.print_config=false", *overrides]
    return compose_config("export", overrides, output.parent / f"{output.name}_run")


def predictions(ckpt_or_model: str, inputs: Path, output: Path, *overrides: str) -> list[dict]:
    cfg = compose_config("predict", [ckpt_or_model, f"input={inputs}", f"output={output}", "predict.score_threshold=0",
                                     "extras.print_config=false", *overrides], output / "run")  # fmt: skip
    predict(cfg)
    return json.loads((output / "predictions.json").read_text())


def as_tensors(results: list[dict]) -> list[dict[str, torch.Tensor]]:
    """predictions.json entries -> per-image detections (XYXY boxes), to pair them as export.py does."""
    images = sorted({r["image_id"] for r in results})
    out = []
    for image_id in images:
        mine = [r for r in results if r["image_id"] == image_id]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)])
        out.append({"boxes": boxes, "labels": torch.tensor([r["category_id"] for r in mine]),
                    "scores": torch.tensor([r["score"] for r in mine])})  # fmt: skip
    return out


def loads_with_pycocotools(results_file: Path, annotation_file: Path, n_images: int) -> COCO:
    """predictions.json against a ground truth holding the dataset's (sparse) categories."""
    ground_truth = COCO()
    categories = json.loads(annotation_file.read_text())["categories"]
    ground_truth.dataset = {"images": [{"id": i, "width": 128, "height": 128} for i in range(1, n_images + 1)],
                            "annotations": [], "categories": categories}  # fmt: skip
    ground_truth.createIndex()
    return ground_truth.loadRes(str(results_file))


def test_faster_rcnn_onnx_equals_pytorch_and_predicts_the_same_coco_results(faster_rcnn, shapes, tmp_path):
    onnx_path = tmp_path / "frcnn.onnx"
    summary = export(export_config(faster_rcnn, onnx_path, f"input={shapes / 'test'}", "export.check_batch_size=4"))
    assert summary["detections"] >= 4 * 10  # 20 per image are kept; the rest may sit on the score cut-off
    assert summary["max_box_difference"] < 0.05 and summary["max_abs_difference"] < 1e-3

    import onnx

    info = json.loads({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["visiontrain"])
    assert info["task"] == "detection" and info["class_names"] == ["rectangle", "ellipse", "triangle"]
    assert info["category_ids"] == [3, 17, 90] and info["exporter"] == "torch.onnx.export(dynamo=False)"
    assert info["opset"] == 17
    assert torch.load(faster_rcnn, weights_only=True)["category_ids"] == [3, 17, 90]  # the data's own ids

    # the test images come in two sizes (128x96, 96x128); the file was exported with the first image only
    via_ckpt = predictions(f"ckpt_path={faster_rcnn}", shapes / "test", tmp_path / "ckpt")  # in one batch
    via_onnx = predictions(f"model_path={onnx_path}", shapes / "test", tmp_path / "onnx")
    assert {r["category_id"] for r in via_ckpt} <= {3, 17, 90} and len(via_ckpt) >= 40
    assert {(r["category_id"], r["category_name"]) for r in via_ckpt} <= {(3, "rectangle"), (17, "ellipse"),
                                                                          (90, "triangle")}  # fmt: skip
    worst = match_detections(as_tensors(via_ckpt), as_tensors(via_onnx), 0.0, 20, 1e-3, 0.05)
    assert worst["unmatched"] == 0 and worst["matched"] >= 40 and worst["boxes"] < 0.05

    for results in ("ckpt", "onnx"):
        loaded = loads_with_pycocotools(tmp_path / results / "predictions.json",
                                        shapes / "annotations" / "instances_test.json", 4)  # fmt: skip
        assert len(loaded.getAnnIds()) == len(via_ckpt) and set(loaded.getCatIds()) == {3, 17, 90}


def test_faster_rcnn_torchscript_equals_pytorch(faster_rcnn, shapes, tmp_path):
    # images of two shapes (128x96, 96x128): the trace keeps the size variable
    cfg = export_config(faster_rcnn, tmp_path / "frcnn.pt", "format=torchscript", f"input={shapes / 'test'}")
    summary = export(cfg)
    assert summary["detections"] >= 2 * 10 and summary["max_box_difference"] < 0.05
    via_ts = predictions(f"model_path={tmp_path / 'frcnn.pt'}", shapes / "test", tmp_path / "ts")
    assert len({r["image_id"] for r in via_ts}) == 4 and {r["category_id"] for r in via_ts} <= {3, 17, 90}


def test_a_detector_that_detects_differently_is_refused(faster_rcnn, shapes, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="export.dynamic_batch=true does not apply to detectors"):
        export(export_config(faster_rcnn, tmp_path / "x.onnx", "export.dynamic_batch=true"))

    import visiontrain.serving.inference as inference  # where export.py takes its ONNX loader from

    real_load = inference.load_onnx

    def drops_the_best_detection(path):
        loaded = real_load(path)
        run = loaded.run
        loaded.run = lambda images: [{k: v[1:] for k, v in out.items()} for out in run(images)]
        return loaded

    monkeypatch.setattr(inference, "load_onnx", drops_the_best_detection)
    with pytest.raises(UserError, match="detects differently from the PyTorch model: 2 detections without a partner"):
        export(export_config(faster_rcnn, tmp_path / "y.onnx", f"input={shapes / 'test'}"))

    def tracer_gives_up(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo\nmore lines")

    monkeypatch.setattr(torch.onnx, "export", tracer_gives_up)
    expected = r"the fasterrcnn detector cannot be exported to ONNX \(RuntimeError: Unsupported: ONNX export of "
    with pytest.raises(UserError, match=expected + r"operator foo\); predict.py ckpt_path="):
        export(export_config(faster_rcnn, tmp_path / "z.onnx"))


@pytest.mark.slow  # a ResNet-50 Mask R-CNN trained two steps, exported and run: ~45 s on 2 cores
def test_mask_rcnn_onnx_masks_equal_pytorch_and_predict_writes_the_same_rle(tmp_path):
    root = detection_formats.write_coco_splits(tmp_path / "shapes", n_train=4, n_val=2, n_test=2)
    data = [*coco_data(root), "data.masks=true", "trainer.limit_train_batches=2"]
    ckpt = trained_checkpoint(tmp_path, data, "maskrcnn")
    summary = export(export_config(ckpt, tmp_path / "mrcnn.onnx", f"input={root / 'test'}"))
    assert summary["detections"] >= 2 * 10 and summary["max_mask_difference"] < 0.01

    via_ckpt = predictions(f"ckpt_path={ckpt}", root / "test", tmp_path / "ckpt")
    via_onnx = predictions(f"model_path={tmp_path / 'mrcnn.onnx'}", root / "test", tmp_path / "onnx")
    assert len(via_onnx) == len(via_ckpt) >= 20
    ious = []
    for a in via_ckpt:  # pair by box (ties in score may swap the order), then compare the RLE masks
        b = min(via_onnx, key=lambda r: max(abs(p - q) for p, q in zip(r["bbox"], a["bbox"])))
        ious.append(float(coco_mask.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0]))
    assert min(ious) > 0.98
