"""Detection and instance segmentation: data formats, models, COCO mAP and end-to-end runs on small real-format data."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.ops import masks_to_boxes

from tests import detection_formats
from visiontrain.cli.eval import evaluate
from visiontrain.cli.train import train
from visiontrain.data.coco_detection import CocoDetectionDataModule, to_coco_results
from visiontrain.data.detection_dataset import AspectRatioBatchSampler
from visiontrain.data.detection_transforms import detection_train_transform
from visiontrain.data.pennfudan_detection import PennFudanDataModule
from visiontrain.errors import UserError
from visiontrain.models.detection import VARIANTS, build_detector
from visiontrain.tasks.detection import average_precision, metric_predictions, metric_targets, summary_values

# small inputs and few RoIs: a detector step on tiny images costs well under a second on a CPU
TINY_R_CNN = [
    "+model.net.box_batch_size_per_image=64",
    "+model.net.rpn_pre_nms_top_n_train=200",
    "+model.net.rpn_post_nms_top_n_train=200",
    "+model.net.rpn_pre_nms_top_n_test=100",
    "+model.net.rpn_post_nms_top_n_test=100",
]
TINY = ["model.net.min_size=64", "model.net.max_size=96", "data.num_workers=0", "data.batch_size=2"]
MODELS = {
    "fasterrcnn": ["model=fasterrcnn", *TINY_R_CNN],
    "maskrcnn": ["model=maskrcnn", *TINY_R_CNN],
    "retinanet": ["model=retinanet"],
    "fcos": ["model=fcos"],
    "ssdlite": ["model=ssdlite"],
}


@pytest.fixture(scope="session")
def detection_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("detection")
    detection_formats.write_coco_splits(root / "shapes")
    detection_formats.write_pennfudan(root)
    return root


def coco_overrides(root: Path, split_dirs=("train", "val", "test")) -> list[str]:
    shapes = root / "shapes"
    out = ["data=coco_detection", "data.num_classes=3"]
    for key, split in zip(("train", "val", "test"), split_dirs):
        out += [
            f"data.{key}.images={shapes / split}",
            f"data.{key}.annotations={shapes}/annotations/instances_{split}.json",
        ]
    return out


def coco_datamodule(root: Path, **kwargs) -> CocoDetectionDataModule:
    shapes = root / "shapes"
    splits = {
        split: {"images": str(shapes / split), "annotations": str(shapes / "annotations" / f"instances_{split}.json")}
        for split in ("train", "val", "test")
    }
    options = dict(num_classes=3, num_workers=0)
    options.update(kwargs)
    return CocoDetectionDataModule(**splits, **options)


# --- data ---------------------------------------------------------------------------------------
def test_sparse_category_ids_round_trip(detection_data):
    dm = coco_datamodule(detection_data)
    dm.setup("fit")
    assert dm.category_ids == (3, 17, 90) and dm.class_names == ("rectangle", "ellipse", "triangle")
    written = json.loads((detection_data / "shapes/annotations/instances_val.json").read_text())
    for index in range(len(dm.val_set)):
        _, target = dm.val_set[index]
        image_id = int(target["image_id"])
        expected = sorted(a["category_id"] for a in written["annotations"] if a["image_id"] == image_id)
        assert sorted(dm.category_ids[label - 1] for label in target["labels"].tolist()) == expected
        # and back out to COCO results with the original ids
        pred = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(target["labels"]))}
        results = to_coco_results([pred], [image_id], dm.category_ids)
        assert sorted(r["category_id"] for r in results) == expected
        boxes = sorted(a["bbox"] for a in written["annotations"] if a["image_id"] == image_id)
        assert np.allclose(sorted(r["bbox"] for r in results), boxes)


def test_masks_and_boxes_are_decoded_from_coco_polygons(detection_data):
    dm = coco_datamodule(detection_data, masks=True)
    dm.setup("fit")
    image, target = dm.val_set[0]
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["masks"].shape == (len(target["boxes"]), *image.shape[-2:])
    # the polygon rasterised by pycocotools fills the box it was drawn in (within a pixel)
    from_masks = masks_to_boxes(target["masks"]) + torch.tensor([0, 0, 1, 1])
    assert torch.allclose(from_masks, target["boxes"], atol=1.5)


def test_imperfect_annotations_are_clipped_dropped_or_kept_and_training_runs(
    detection_data, tmp_path, caplog, make_config
):
    shapes = tmp_path / "odd"
    data = detection_formats.write_coco(shapes / "images", shapes / "train.json", 4, seed=5)
    first = data["images"][0]
    w, h = first["width"], first["height"]
    extra = [
        {"bbox": [10, 10, 0, 20], "iscrowd": 0},  # no width: dropped
        {"bbox": [w - 10, h - 10, 30, 30], "iscrowd": 0},  # reaches outside: clipped to (w-10, h-10, w, h)
        {"bbox": [0, 0, 40, 40], "iscrowd": 1},  # crowd: evaluation only
        {"bbox": [w + 5, 5, 10, 10], "iscrowd": 0},  # entirely outside: nothing left, dropped
    ]
    for n, ann in enumerate(extra):
        data["annotations"].append({"id": 900 + n, "image_id": first["id"], "category_id": 17, "area": 100, **ann})
    data["images"].append({"id": 77, "file_name": "empty.png", "width": 64, "height": 48})  # no annotations
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 30, np.uint8)).save(shapes / "images" / "empty.png")
    (shapes / "train.json").write_text(json.dumps(data))

    caplog.set_level(logging.WARNING)
    paths = {"images": str(shapes / "images"), "annotations": str(shapes / "train.json")}
    dm = CocoDetectionDataModule(train=paths, val=paths, num_classes=3, num_workers=0)
    dm.setup("fit")
    warnings = [r.getMessage() for r in caplog.records]
    assert any("2 box(es)" in m and "clipped" in m and "annotation 901" in m for m in warnings)
    assert any("2 box(es)" in m and "dropped" in m and "annotation 900" in m for m in warnings)
    _, val_target = dm.val_set[0]
    ann_count = sum(a["image_id"] == first["id"] for a in data["annotations"])
    assert len(val_target["boxes"]) == ann_count - 2 and int(val_target["iscrowd"].sum()) == 1
    assert [w - 10, h - 10, w, h] in val_target["boxes"].tolist()
    train_boxes = dm.train_set.source.load(0, False)[1]["boxes"]
    assert len(train_boxes) == ann_count - 2  # the source keeps crowds; the training dataset drops them:
    assert int(dm.train_set[0][1].get("iscrowd", torch.zeros(0)).sum()) == 0
    assert len(dm.val_set[len(dm.val_set) - 1][1]["boxes"]) == 0  # the image without annotations

    cfg = make_config(
        "train",
        [
            "data=coco_detection",
            "data.num_classes=3",
            *[f"data.{s}.{k}={v}" for s in ("train", "val") for k, v in paths.items()],
            *MODELS["fasterrcnn"],
            *TINY,
            "debug=fdr",
        ],
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "val/map" in metrics


def test_bad_coco_input_is_named_in_one_sentence(detection_data, tmp_path):
    shapes = detection_data / "shapes"
    good = {"images": str(shapes / "val"), "annotations": str(shapes / "annotations/instances_val.json")}
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    dm = CocoDetectionDataModule(train={"images": good["images"], "annotations": str(broken)}, val=good, num_classes=3)
    with pytest.raises(UserError, match=f"annotation file {broken} is not valid JSON"):
        dm.setup("fit")

    listing = json.loads(Path(good["annotations"]).read_text())
    listing["images"][1]["file_name"] = "not_there.png"
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(listing))
    dm = CocoDetectionDataModule(train={"images": good["images"], "annotations": str(missing)}, val=good, num_classes=3)
    with pytest.raises(UserError, match=r"1 image\(s\) listed in .*missing.json are missing, e.g. .*not_there.png"):
        dm.setup("fit")

    dm = CocoDetectionDataModule(train=good, val=good, num_classes=5)
    with pytest.raises(UserError, match="data.num_classes=5 but .* has 3 object classes .*set data.num_classes=3"):
        dm.setup("fit")


def test_pennfudan_layout_boxes_masks_and_split(detection_data):
    dm = PennFudanDataModule(
        root=str(detection_data / "PennFudanPed"), val_size=2, test_size=3, num_workers=0, masks=True
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7, 2, 3)
    assert dm.class_names == ("pedestrian",) and dm.num_classes == 1
    splits = [set(s.indices) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert set.union(*splits) == set(range(12)) and sum(map(len, splits)) == 12
    again = PennFudanDataModule(root=str(detection_data / "PennFudanPed"), val_size=2, test_size=3)
    again.setup("fit")
    assert again.test_set.indices == dm.test_set.indices  # the split is fixed by split_seed

    for index in dm.test_set.indices:
        _, target = dm.test_set[dm.test_set.indices.index(index)]
        name = dm.test_set.source.image_paths[index].stem
        text = (detection_data / "PennFudanPed" / "Annotation" / f"{name}.txt").read_text()
        # the annotation files count pixels from 1 and include the last one: XYXY pixel edges are (x0-1, y0-1, x1, y1)
        written = [
            [int(v) for v in line.split(": ")[1].replace("(", "").replace(")", "").replace(" - ", ",").split(",")]
            for line in text.splitlines()
            if line.startswith("Bounding box")
        ]
        expected = [[x0 - 1, y0 - 1, x1, y1] for x0, y0, x1, y1 in written]
        assert target["boxes"].tolist() == expected
        assert target["labels"].tolist() == [1] * len(expected)
        assert target["masks"].flatten(1).sum(1).tolist() == target["area"].tolist()

    with pytest.raises(UserError, match="PNGImages does not exist"):
        PennFudanDataModule(root=str(detection_data / "nowhere")).setup("fit")


def test_augmentation_moves_boxes_and_masks_together():
    from torchvision import tv_tensors

    torch.manual_seed(0)
    transform = detection_train_transform(hflip=True, scale_jitter=(0.6, 1.4), photometric=True)
    masks = torch.zeros(2, 60, 80, dtype=torch.uint8)
    masks[0, 5:25, 10:30] = 1
    masks[1, 30:55, 50:78] = 1
    boxes = masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1])
    for _ in range(20):
        image, target = transform(
            tv_tensors.Image(torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8)),
            {
                "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(60, 80)),
                "masks": tv_tensors.Mask(masks),
                "labels": torch.tensor([1, 2]),
                "iscrowd": torch.zeros(2, dtype=torch.int64),
                "area": torch.tensor([400.0, 700.0]),
            },
        )
        assert image.dtype == torch.float32 and image.shape == (3, 60, 80)
        n = len(target["boxes"])
        assert len(target["labels"]) == len(target["masks"]) == len(target["iscrowd"]) == len(target["area"]) == n
        visible = target["masks"].flatten(1).any(1)
        from_masks = masks_to_boxes(target["masks"][visible]) + torch.tensor([0, 0, 1, 1])
        assert torch.allclose(from_masks, target["boxes"][visible], atol=2.0)


def test_aspect_ratio_batches_hold_one_orientation():
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1]
    sampler = AspectRatioBatchSampler(torch.utils.data.RandomSampler(range(len(groups))), groups, batch_size=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # 5 landscape -> 2 batches, 6 portrait -> 2 batches
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)


# --- models -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", VARIANTS)
def test_every_variant_sizes_its_class_outputs_for_the_data(family):
    expected = {"fasterrcnn": 4, "maskrcnn": 4, "ssdlite": 4, "retinanet": 3, "fcos": 3}[family]  # K=3 (+ background)
    for variant in VARIANTS[family]:
        net = build_detector(family, variant, num_classes=3, min_size=64, max_size=96)
        model = net.model
        if family in ("fasterrcnn", "maskrcnn"):
            assert model.roi_heads.box_predictor.cls_score.out_features == expected
        if family == "maskrcnn":
            assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == expected
        if family in ("retinanet", "fcos", "ssdlite"):
            head = model.head.classification_head
            assert (head.num_classes if family != "ssdlite" else head.num_columns) == expected
        assert all(p.requires_grad for p in model.backbone.parameters())  # from scratch: all trainable


def test_sigmoid_families_see_labels_from_zero_and_answer_from_one():
    net = build_detector("retinanet", "resnet50_fpn", num_classes=2, min_size=64, max_size=64)
    seen = {}

    def spy(images, targets=None):
        seen["labels"] = None if targets is None else targets[0]["labels"].tolist()
        return [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([0]), "scores": torch.ones(1)}]

    net.model.forward = spy
    net.train()
    net([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([2])}])
    assert seen["labels"] == [1]
    net.eval()
    assert net([torch.rand(3, 64, 64)])[0]["labels"].tolist() == [1]


def test_pretrained_weights_that_cannot_be_downloaded_stop_with_one_sentence(monkeypatch, tmp_path):
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match=r"could not download torchvision weights maskrcnn_resnet50_fpn\.COCO_V1"):
        build_detector("maskrcnn", "resnet50_fpn", num_classes=1, weights="DEFAULT")
    with pytest.raises(UserError, match=r"could not download torchvision weights resnet50\.IMAGENET1K_V2"):
        build_detector("fcos", "resnet50_fpn", num_classes=1, weights_backbone="IMAGENET1K_V2")
    with pytest.raises(UserError, match="torchvision has no weights 'COCO_V9'"):
        build_detector("fasterrcnn", "resnet50_fpn", num_classes=1, weights="COCO_V9")


# --- metrics ------------------------------------------------------------------------------------
def test_map_equals_pycocotools_cocoeval_on_the_same_predictions(detection_data):
    """Our pipeline (labels mapped from sparse ids, crowd flags, XYXY boxes, masks) scored by torchmetrics
    must give exactly what COCO's own evaluation gives on the original annotation file."""
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    shapes = detection_data / "shapes"
    annotation_file = shapes / "annotations" / "instances_test.json"
    data = json.loads(annotation_file.read_text())
    # a crowd region on the first image, so that its ignore semantics are compared too
    first = data["images"][0]
    data["annotations"].append(
        {
            "id": 999,
            "image_id": first["id"],
            "category_id": 3,
            "bbox": [0, 0, 30, 30],
            "area": 900.0,
            "iscrowd": 1,
            "segmentation": [[0, 0, 30, 0, 30, 30, 0, 30]],
        }
    )
    crowd_file = shapes / "annotations" / "instances_test_crowd.json"
    crowd_file.write_text(json.dumps(data))
    paths = {"images": str(shapes / "test"), "annotations": str(crowd_file)}
    dm = CocoDetectionDataModule(train=paths, val=paths, num_classes=3, masks=True, num_workers=0)
    dm.setup("fit")

    rng = np.random.default_rng(0)
    targets, preds, image_ids = [], [], []
    for index in range(len(dm.val_set)):
        image, target = dm.val_set[index]
        height, width = image.shape[-2:]
        boxes, labels, masks = [], [], []
        for box, label, mask in zip(target["boxes"], target["labels"], target["masks"]):
            if rng.random() < 0.15:
                continue  # a miss
            boxes.append(box + torch.from_numpy(rng.normal(0, 3, 4)).float())  # imperfect localisation
            labels.append(int(label) if rng.random() > 0.1 else int(label) % 3 + 1)  # sometimes the wrong class
            masks.append(torch.roll(mask, shifts=int(rng.integers(-2, 3)), dims=1))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            boxes.append(torch.tensor([x, y, x + 20, y + 20], dtype=torch.float32))
            labels.append(int(rng.integers(1, 4)))
            fp = torch.zeros(height, width, dtype=torch.uint8)
            fp[int(y) : int(y) + 20, int(x) : int(x) + 20] = 1
            masks.append(fp)
        pred = {
            "boxes": torch.stack(boxes).reshape(-1, 4) if boxes else torch.zeros(0, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.from_numpy(rng.uniform(0.05, 1.0, len(boxes))).float(),
            "masks": (torch.stack(masks) if masks else torch.zeros(0, height, width)).float()[:, None],
        }
        preds.append(pred)
        targets.append(target)
        image_ids.append(int(target["image_id"]))

    metric = average_precision(("bbox", "segm"))
    metric.update(metric_predictions(preds, True), metric_targets(targets, True))
    ours = summary_values(metric.compute(), ("bbox", "segm"))

    ground_truth = COCO(str(crowd_file))
    box_results = to_coco_results(preds, image_ids, dm.category_ids)
    flat_masks = [m[0] > 0.5 for p in preds for m in p["masks"]]  # in the order to_coco_results lists boxes
    segm_results = []
    for entry, mask in zip(box_results, flat_masks):
        rle = coco_mask.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        segm_results.append({k: v for k, v in entry.items() if k != "bbox"} | {"segmentation": rle})
    for iou_type, results, prefix in (("bbox", box_results, ""), ("segm", segm_results, "segm_")):
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats = evaluator.stats
        assert 0.2 < stats[0] < 0.95  # a score with room on both sides, so the comparison means something
        for name, position in (("map", 0), ("map_50", 1), ("map_75", 2), ("map_large", 5), ("mar_100", 8)):
            assert float(ours[prefix + name]) == pytest.approx(stats[position], abs=1e-6), (iou_type, name)


# --- end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_detection_model(make_config, detection_data, model):
    cfg = make_config("train", coco_overrides(detection_data) + MODELS[model] + TINY + ["debug=fdr"])
    metrics = train(cfg)
    components = {
        "fasterrcnn": ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"],
        "maskrcnn": ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"],
        "retinanet": ["loss_classification", "loss_bbox_regression"],
        "fcos": ["loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"],
        "ssdlite": ["loss_classification", "loss_bbox_regression"],
    }[model]
    assert {f"train/{c}" for c in components} <= metrics.keys()
    assert sum(metrics[f"train/{c}"] for c in components) == pytest.approx(metrics["train/loss"], rel=1e-4)
    expected = {"val/map", "val/map_50", "val/map_75", "val/map_best", "test/map", "test/map_50", "test/map_75"}
    if model == "maskrcnn":
        expected |= {"val/segm_map", "test/segm_map", "test/segm_map_50"}
    assert expected <= metrics.keys()
    assert all(0.0 <= metrics[k] <= 1.0 for k in expected)
    assert any(k.startswith("test/map_class/") for k in metrics)


def test_pennfudan_fast_dev_run_with_masks(make_config, detection_data):
    cfg = make_config(
        "train",
        [
            "data=pennfudan",
            f"data.root={detection_data / 'PennFudanPed'}",
            "data.val_size=2",
            "data.test_size=2",
            *MODELS["maskrcnn"],
            *TINY,
            "debug=fdr",
        ],
    )
    metrics = train(cfg)
    assert {"train/loss_mask", "test/segm_map", "test/map_class/pedestrian"} <= metrics.keys()


def test_mask_rcnn_needs_masks_from_the_data(make_config, detection_data):
    cfg = make_config(
        "train", coco_overrides(detection_data) + MODELS["maskrcnn"] + TINY + ["data.masks=false", "debug=fdr"]
    )
    with pytest.raises(UserError, match="set data.masks=true"):
        train(cfg)
    cfg = make_config("train", coco_overrides(detection_data) + MODELS["fasterrcnn"] + TINY + ["model.masks=true"])
    with pytest.raises(Exception, match="set model.masks=false"):
        instantiate(cfg.model)


DATA_DIR = Path(os.environ.get("DATA_DIR", "/nonexistent"))


@pytest.mark.real_data
@pytest.mark.skipif(not (DATA_DIR / "PennFudanPed" / "PedMasks").is_dir(), reason="DATA_DIR does not hold PennFudanPed")
def test_pennfudan_real_one_epoch_smoke(tmp_path):
    from visiontrain.runs.config import compose_config

    cfg = compose_config(
        "train",
        [
            f"paths.data_dir={DATA_DIR}",
            "model=maskrcnn",
            "data=pennfudan",
            *TINY_R_CNN,
            "model.net.min_size=160",
            "model.net.max_size=240",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "trainer.accelerator=cpu",
            "extras.print_config=false",
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert {"val/map", "test/map", "test/segm_map", "train/loss_mask"} <= metrics.keys()
    assert np.isfinite(metrics["train/loss"])


def test_short_run_logs_losses_map_and_image_grid_and_eval_reproduces_test_map(make_config, detection_data):
    cfg = make_config(
        "train",
        coco_overrides(detection_data)
        + MODELS["fasterrcnn"]
        + TINY
        + [
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.log_every_n_steps=1",
            "model.val_images_logged=3",
        ],
    )
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), acc.Tags()["images"]
    assert {"train/loss_classifier", "train/loss_box_reg", "train/loss_objectness", "val/map", "val/map_50"} <= scalars
    assert {"val/map_best", "test/map", "test/map_class/ellipse"} <= scalars
    # the validation pictures; the test's review figures (also in <run dir>/plots) and the learning curves
    assert set(images) == {"val/predictions", "test/pr_curves", "test/confusion_matrix", "train/learning_curves"}
    grid = acc.Images("val/predictions")[0]
    assert grid.width > 3 * 320 and grid.height >= 320  # three 320 px tiles side by side

    record = json.loads((run_dir / "metrics.json").read_text())
    checkpoint = torch.load(record["best_model_path"], weights_only=True)
    assert checkpoint["class_names"] == ["rectangle", "ellipse", "triangle"]
    eval_cfg = make_config(
        "eval", coco_overrides(detection_data) + ["data.num_workers=0", f"ckpt_path={record['best_model_path']}"]
    )
    assert evaluate(eval_cfg)["test/map"] == pytest.approx(metrics["test/map"], abs=1e-6)


@pytest.mark.slow  # ~40 epochs of a from-scratch detector: about a minute on 2 cores, too long for `make test`
def test_overfit_a_handful_of_images_reaches_map50_0_9(make_config, tmp_path):
    """Targets, augmentation, label mapping, model and metric line up: the detector learns 8 images by heart."""
    shapes = tmp_path / "few"
    detection_formats.write_coco(shapes / "images", shapes / "train.json", 8, seed=1)
    paths = [
        f"data.{s}.{k}={v}"
        for s in ("train", "val")
        for k, v in (("images", shapes / "images"), ("annotations", shapes / "train.json"))
    ]
    cfg = make_config(
        "train",
        [
            "data=coco_detection",
            "data.num_classes=3",
            *paths,
            "data.num_workers=0",
            "data.batch_size=4",
            "data.photometric=false",
            "data.scale_jitter=null",
            "model=fasterrcnn",
            "model.net.min_size=128",
            "model.net.max_size=160",
            *TINY_R_CNN,
            "model.optimizer.lr=0.02",
            "model.val_images_logged=0",
            "trainer.max_epochs=70",
            "callbacks=early_stopping",
            "callbacks.early_stopping.monitor=val/map_50",
            "callbacks.early_stopping.patience=100",
            "+callbacks.early_stopping.stopping_threshold=0.9",
            "test=false",
        ],
    )
    metrics = train(cfg)
    assert metrics["val/map_50"] >= 0.9


def test_predict_writes_coco_results_and_drawn_images(make_config, detection_data, tmp_path):
    from pycocotools.coco import COCO

    from visiontrain.cli.predict import predict

    overrides = ["data=pennfudan", f"data.root={detection_data / 'PennFudanPed'}", "data.val_size=2",
                 "data.test_size=2", *MODELS["maskrcnn"], *TINY, "trainer.max_epochs=1",
                 "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false"]  # fmt: skip
    cfg = make_config("train", overrides)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in sorted((detection_data / "PennFudanPed" / "PNGImages").glob("*.png"))[:3]:
        shutil.copy(path, inputs / path.name)
    images = sorted(inputs.iterdir())
    out = tmp_path / "pred"
    predict_cfg = make_config(
        "predict", [f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}", "predict.score_threshold=0.0"]
    )
    assert predict(predict_cfg)["images"] == 3
    results = json.loads((out / "predictions.json").read_text())
    assert results and {"image_id", "file", "category_id", "category_name", "bbox", "score", "segmentation"} <= set(
        results[0]
    )
    assert {r["category_name"] for r in results} == {"pedestrian"}
    assert len(list(out.glob("*_detections.png"))) == 3
    sizes = {i + 1: Image.open(p).size for i, p in enumerate(images)}
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": i, "width": w, "height": h} for i, (w, h) in sizes.items()],
        "annotations": [],
        "categories": [{"id": 1, "name": "pedestrian"}],
    }
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(str(out / "predictions.json"))  # the COCO results format, as pycocotools reads it
    assert len(loaded.getAnnIds()) == len(results)
