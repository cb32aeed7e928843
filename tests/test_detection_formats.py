"""Detection data in the YOLO (Ultralytics) and Pascal VOC XML layouts: known boxes written in each format read back
the same, imperfect files are clipped/dropped with a warning or named in one sentence, VOC's difficult objects are
ignored as VOC ignores them, and a detector trains on each (also on the real PennFudan, written in each format)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes

from tests import detection_formats
from tests.conftest import QUIET
from tests.test_detection import MODELS, TINY
from visiontrain.cli.train import train
from visiontrain.data.voc_detection import VocDetectionDataModule
from visiontrain.data.yolo_detection import YoloDetectionDataModule
from visiontrain.errors import UserError
from visiontrain.runs.config import compose_config
from visiontrain.tasks.detection import average_precision, metric_predictions, metric_targets, summary_values

# a box is written as numbers of 6 decimals (YOLO) or whole pixels (VOC), and a polygon's extent is one pixel short
# of the drawn shape's tight box: every box read back lies within a pixel of the box written
PIXEL = 1.0 + 1e-3


def yolo(root: Path, **options) -> YoloDetectionDataModule:
    dm = YoloDetectionDataModule(root=str(root), num_workers=0, **options)
    dm.setup("fit")
    return dm


def voc(root: Path, **options) -> VocDetectionDataModule:
    dm = VocDetectionDataModule(root=str(root), num_workers=0, **options)
    dm.setup("fit")
    return dm


def read_back(dataset) -> dict[str, dict]:
    """``{file name: target}`` of every image of a split as the datamodule gives it; training samples straight from
    the source (the dataset would augment them)."""
    out = {}
    for position, index in enumerate(dataset.indices):
        _, target = dataset.source.load(index, dataset.with_masks) if dataset.train else dataset[position]
        out[dataset.source.image_paths[index].name] = target
    return out


def assert_same_objects(target: dict, objects: list[dict], label_of) -> None:
    expected = sorted((label_of(o), o["box"]) for o in objects)
    got = sorted(zip(target["labels"].tolist(), target["boxes"].tolist()))
    assert [label for label, _ in got] == [label for label, _ in expected]
    assert np.allclose([box for _, box in got], [box for _, box in expected], atol=PIXEL)


def labels_dir_line(root: Path, split: str, name: str, line: str) -> Path:
    path = root / "labels" / split / f"{Path(name).stem}.txt"
    path.write_text(path.read_text() + line + "\n")
    return path


# --- YOLO -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yolo_shapes(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("yolo") / "shapes"
    return root, detection_formats.write_yolo_shapes(root, as_dict=True)


def test_yolo_round_trip_with_background_images(yolo_shapes):
    root, written = yolo_shapes
    dm = yolo(root)
    spec = dm.spec
    assert spec.class_names == detection_formats.CLASS_NAMES and spec.category_ids == (0, 1, 2)
    assert spec.has_test_split
    for split in ("train", "val", "test"):
        targets = read_back(getattr(dm, f"{split}_set"))
        assert sorted(targets) == sorted(name for name, _, _ in written[split])
        for name, _, objects in written[split]:
            target = targets[name]
            if objects is None:  # no label file: a background image, kept without objects
                assert target["boxes"].shape == (0, 4) and len(target["labels"]) == 0
                continue
            assert_same_objects(target, objects, lambda o: o["class"] + 1)
            assert target["iscrowd"].tolist() == [0] * len(objects)
    # what labels a split: data.yaml and the label files there are (none for the background image)
    source, train = dm.train_set.source, dm.train_set.indices
    assert source.label_files(train) == [root / "data.yaml"] + sorted(
        root / "labels" / "train" / f"{Path(name).stem}.txt" for name, _, objects in written["train"] if objects
    )
    # the list form of names reads the same
    detection_formats.write_yolo_yaml(root)
    assert yolo(root).class_names == detection_formats.CLASS_NAMES


def write_roboflow_export(root: Path) -> dict:
    """The layout Roboflow's "YOLOv8" export writes: <split>/images and <split>/labels per split (val named valid),
    and a data.yaml whose train/val/test point one folder up, as its files do."""
    written = {}
    for seed, (split, folder, n) in enumerate((("train", "train", 6), ("val", "valid", 3), ("test", "test", 3))):
        samples = detection_formats.shapes_samples(n, 300 + seed, ".jpg", prefix=f"{split}_")
        samples = [(name, image, [{k: v for k, v in o.items() if k != "polygon"} for o in objs])
                   for name, image, objs in samples]  # fmt: skip
        for name, image, objects in samples:
            detection_formats.save_image(image, root / folder / "images" / name)
            width, height = detection_formats.image_size(image)
            (root / folder / "labels").mkdir(parents=True, exist_ok=True)
            lines = "".join(detection_formats.yolo_line(obj, width, height) + "\n" for obj in objects)
            (root / folder / "labels" / f"{Path(name).stem}.txt").write_text(lines)
        written[split] = samples
    names = detection_formats.CLASS_NAMES
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(names)}\nnames: {list(names)}\n\nroboflow:\n  workspace: someone\n  version: 1\n"
    )
    return written


def test_a_roboflow_export_is_read_through_its_data_yaml(tmp_path):
    root = tmp_path / "Shapes.v1i.yolov8"
    written = write_roboflow_export(root)
    dm = yolo(root)  # data.root, no images/train: its data.yaml says where the splits are
    assert dm.spec.class_names == detection_formats.CLASS_NAMES and dm.spec.has_test_split
    for split in ("train", "val", "test"):
        targets = read_back(getattr(dm, f"{split}_set"))
        assert sorted(targets) == sorted(name for name, _, _ in written[split])
        for name, _, objects in written[split]:
            assert_same_objects(targets[name], objects, lambda o: o["class"] + 1)


def test_an_ultralytics_data_yaml_with_a_path_image_lists_and_no_test_split(yolo_shapes, tmp_path):
    """data.yaml=<file> elsewhere: path relative to the yaml, train as a list of a folder and a .txt list of images
    (the ./-relative lines Ultralytics' autosplit writes), val a folder, no test key: no test stage."""
    root, written = yolo_shapes
    listed = [name for name, _, _ in written["test"]][:2]
    (root / "extra.txt").write_text("".join(f"./images/test/{name}\n" for name in listed))
    config = tmp_path / "configs" / "shapes.yaml"
    config.parent.mkdir()
    relative = os.path.relpath(root, config.parent)  # path: relative to the yaml's folder
    config.write_text(
        f"path: {relative}\ntrain: [images/train, extra.txt]\nval: images/val\n"
        "names:\n  0: rectangle\n  1: ellipse\n  2: triangle\n"
    )
    dm = YoloDetectionDataModule(yaml=str(config), num_workers=0)
    dm.setup("fit")
    assert not dm.spec.has_test_split
    train = read_back(dm.train_set)
    assert sorted(train) == sorted([name for name, _, _ in written["train"]] + listed)
    for name, _, objects in written["test"][:2]:  # their labels come from labels/test/, by Ultralytics' pairing
        assert_same_objects(train[name], objects, lambda o: o["class"] + 1)
    assert sorted(read_back(dm.val_set)) == sorted(name for name, _, _ in written["val"])

    config.write_text(f"path: {root}\ntrain: images/train\nval: missing/\nnames: [a, b, c]\n")
    with pytest.raises(UserError, match=r"shapes.yaml: val: missing/ is neither a folder of images nor a list"):
        YoloDetectionDataModule(yaml=str(config), num_workers=0).setup("fit")


def test_yolo_polygons_become_instance_masks_and_boxes(tmp_path):
    root = tmp_path / "polygons"
    written = detection_formats.write_yolo_shapes(root, counts=(3, 3, 0), polygons=True)
    dm = yolo(root, masks=True)
    assert not dm.spec.has_test_split and dm.test_set is None
    targets = read_back(dm.val_set)
    for name, _, objects in written["val"]:
        target = targets[name]
        assert_same_objects(target, objects, lambda o: o["class"] + 1)  # the box is the polygon's extent
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape[0] == len(objects)
        # rasterised, a shape loses the tip of a triangle where it is thinner than a pixel
        from_masks = masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1])
        assert torch.allclose(from_masks, target["boxes"], atol=2.5)
        # the area COCO evaluation sorts objects by is the polygon's, close to its pixel count
        assert torch.allclose(target["area"], masks.flatten(1).sum(1).float(), rtol=0.1)
    # a box line cannot give a mask: one sentence naming it before any training
    labels_dir_line(root, "train", written["train"][1][0], "0 0.5 0.5 0.2 0.2")
    with pytest.raises(UserError, match=r"1 line\(s\) of .*labels are boxes \(first: .*train_0001.txt line \d\)"):
        yolo(root, masks=True)
    assert len(yolo(root).train_set) == 3  # boxes alone are fine without masks


def test_yolo_boxes_past_the_edge_are_clipped_and_empty_ones_dropped_with_a_count(yolo_shapes, tmp_path, caplog):
    root = tmp_path / "odd"
    shutil.copytree(yolo_shapes[0], root)
    name = yolo_shapes[1]["val"][0][0]
    labels_dir_line(root, "val", name, "1 0.05 0.5 0.2 0.2")  # reaches 0.05 past the left edge: clipped
    labels_dir_line(root, "val", name, "1 0.95 0.95 0.2 0.2")  # past the right and bottom: clipped
    labels_dir_line(root, "val", name, "2 0.5 0.5 0 0.3")  # no width: dropped
    caplog.set_level(logging.WARNING)
    dm = yolo(root)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("2 box(es)" in m and "clipped" in m and f"{Path(name).stem}.txt line" in m for m in warnings)
    assert any("1 box(es)" in m and "dropped" in m and "labels/val" in m for m in warnings)
    boxes = read_back(dm.val_set)[name]["boxes"]
    width, height = 128, 96  # val_0000 is landscape
    for box in ([0.0, 0.4 * height, 0.15 * width, 0.6 * height], [0.85 * width, 0.85 * height, width, height]):
        assert torch.isclose(boxes, torch.tensor(box), atol=1e-3).all(1).any(), box
    assert len(boxes) == len(yolo_shapes[1]["val"][0][2]) + 2


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("bad_line", r"labels/val/val_0000.txt line 2 has 4 numbers \('1 0.5 0.5 0.2'\); YOLO lines are"),
        ("not_numbers", r"labels/val/val_0000.txt line 2 is 'car 0.5 0.5 0.2 0.2', not numbers"),
        ("class_out_of_range", r"labels/val/val_0000.txt line 2 has class 3, but .*data.yaml names classes 0..2"),
        ("outside_image", r"labels/val/val_0000.txt line 2 has coordinate 64, outside 0..1: .*lies outside the image"),
        ("missing_image", r"1 label file\(s\) in .*labels/train have no image .*, e.g. .*labels/train/gone.txt"),
        ("no_labels_folder", r"labels/test does not exist: a YOLO dataset has images/test/ and labels/test/"),
        ("names_with_a_gap", r"data.yaml: names has ids \[0, 1, 5\]; YOLO class ids must be 0..2"),
        ("no_names", r"data.yaml has no names"),
        ("unreadable_image", r"cannot decode image .*images/val/val_0001.png"),
    ],
)
def test_bad_yolo_files_are_named_in_one_sentence(yolo_shapes, tmp_path, case, message):
    root = tmp_path / case
    shutil.copytree(yolo_shapes[0], root)
    label_file = root / "labels" / "val" / "val_0000.txt"
    first_line = label_file.read_text().splitlines()[0]
    second = {
        "bad_line": "1 0.5 0.5 0.2",
        "not_numbers": "car 0.5 0.5 0.2 0.2",
        "class_out_of_range": "3 0.5 0.5 0.2 0.2",
        "outside_image": "0 64 32 10 10",  # pixels where fractions belong
    }
    if case in second:
        label_file.write_text(f"{first_line}\n{second[case]}\n")
    elif case == "missing_image":
        (root / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    elif case == "no_labels_folder":
        shutil.rmtree(root / "labels" / "test")
    elif case == "names_with_a_gap":
        (root / "data.yaml").write_text("names:\n  0: rectangle\n  1: ellipse\n  5: triangle\n")
    elif case == "no_names":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\n")
    elif case == "unreadable_image":
        (root / "images" / "val" / "val_0001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=message):
        yolo(root)


# --- Pascal VOC -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voc_shapes(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2007"
    return root, detection_formats.write_voc_shapes(root, difficult_every=4)


def test_voc_round_trip_and_class_names_from_the_training_split(voc_shapes):
    root, written = voc_shapes
    dm = voc(root)
    names = tuple(sorted({o["name"] for _, _, objects in written["train"] for o in objects}))
    assert dm.spec.class_names == names and dm.spec.has_test_split
    for split in ("train", "val", "test"):
        targets = read_back(getattr(dm, f"{split}_set"))
        assert sorted(targets) == sorted(name for name, _, _ in written[split])
        for name, _, objects in written[split]:
            assert_same_objects(targets[name], objects, lambda o: names.index(o["name"]) + 1)
    # given class names set the labels (VOC's usual 20, say)
    given = ("triangle", "rectangle", "ellipse", "hexagon")
    dm = voc(root, class_names=list(given))
    assert dm.spec.class_names == given
    for name, _, objects in written["val"]:
        assert_same_objects(read_back(dm.val_set)[name], objects, lambda o: given.index(o["name"]) + 1)


def written_object(written: dict, name: str, box: list[float]) -> dict:
    """The object written for image ``name`` nearest to ``box``."""
    objects = next(objs for samples in written.values() for n, _, objs in samples if n == name)
    return min(objects, key=lambda o: np.abs(np.subtract(o["box"], box)).sum())


def test_voc_difficult_objects_are_not_trained_on_and_ignored_by_evaluation(voc_shapes):
    root, written = voc_shapes
    dm = voc(root, hflip=False, scale_jitter=None, photometric=False)  # training samples as written
    for index in range(len(dm.train_set)):  # a training sample holds only the objects that are not difficult
        name = dm.train_set.source.image_paths[dm.train_set.indices[index]].name
        _, target = dm.train_set[index]
        objects = next(objs for n, _, objs in written["train"] if n == name)
        assert len(target["boxes"]) == sum(not o["difficult"] for o in objects)
        assert not any(written_object(written, name, box)["difficult"] for box in target["boxes"].tolist())
        assert int(target["iscrowd"].sum()) == 0
    # evaluation samples keep them, flagged as crowd regions: what COCO evaluation ignores (all images are scored
    # here, so that every class with a difficult object has ordinary ones too)
    source = dm.val_set.source
    targets = [source.load(i, False)[1] for i in range(len(source))]
    for target, path in zip(targets, source.image_paths):
        flags = [int(written_object(written, path.name, box)["difficult"]) for box in target["boxes"].tolist()]
        assert target["iscrowd"].tolist() == flags
    hard = {int(label) for t in targets for label in t["labels"][t["iscrowd"] == 1]}
    assert hard and hard <= {int(label) for t in targets for label in t["labels"][t["iscrowd"] == 0]}

    def score(preds, truth):
        metric = average_precision(("bbox",))
        metric.update(metric_predictions(preds, False), metric_targets(truth, False))
        return float(summary_values(metric.compute(), ("bbox",))["map"])

    solid = [t["iscrowd"] == 0 for t in targets]
    found = [{"boxes": t["boxes"][s], "labels": t["labels"][s], "scores": torch.ones(int(s.sum()))}
             for t, s in zip(targets, solid)]  # fmt: skip
    # finding every object but the difficult ones is a perfect score, as in VOC: a difficult object is not missed...
    assert score(found, targets) == pytest.approx(1.0)
    ordinary = [t | {"iscrowd": torch.zeros_like(t["iscrowd"])} for t in targets]
    assert score(found, ordinary) < 0.999  # (were they ordinary objects, missing them would cost)
    # ... and a confident detection on a difficult object is no false positive either
    on_difficult = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.where(s, 0.5, 1.0)}
                    for t, s in zip(targets, solid)]  # fmt: skip
    assert score(on_difficult, targets) == pytest.approx(1.0)
    absent = [{k: (v[s] if k in ("boxes", "labels", "iscrowd", "area") else v) for k, v in t.items()}
              for t, s in zip(targets, solid)]  # fmt: skip
    assert score(on_difficult, absent) < 0.999  # (where nothing is annotated, the same detections are false)


def test_voc_boxes_past_the_edge_are_clipped_with_a_counted_warning(voc_shapes, tmp_path, caplog):
    root = tmp_path / "VOC2007"
    shutil.copytree(voc_shapes[0], root)
    name, _, objects = voc_shapes[1]["val"][0]
    width, height = 128, 96
    odd = objects + [
        {"name": "ellipse", "box": [-5, 10, 20, 30]},  # xmin 1-5 = -4: past the left edge
        {"name": "ellipse", "box": [100, 80, width + 3, height + 3]},
    ]
    xml = detection_formats.voc_xml(name, width, height, odd)
    # without <size> (some tools leave it out), the image's header tells it
    xml = re.sub(r"<size>.*</size>", "", xml)
    (root / "Annotations" / f"{Path(name).stem}.xml").write_text(xml)
    caplog.set_level(logging.WARNING)
    dm = voc(root)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("2 box(es)" in m and "clipped" in m and f"{Path(name).stem}.xml" in m for m in warnings)
    boxes = read_back(dm.val_set)[name]["boxes"].tolist()
    assert [0, 10, 20, 30] in boxes and [100, 80, width, height] in boxes and len(boxes) == len(odd)


VOC_CASES = {
    "not_xml": ("<annotation><object>", r"annotation file .*Annotations/val_0000.xml is not valid XML"),
    "bad_bndbox": (
        "<annotation><object><name>ellipse</name><bndbox><xmin>3</xmin><ymin>a</ymin></bndbox></object></annotation>",
        r"object 1 \(ellipse\) in .*val_0000.xml has bndbox \['3', 'a', None, None\]; VOC needs numbers",
    ),
    "inverted": (
        detection_formats.voc_xml("val_0000.jpg", 128, 96, [{"name": "ellipse", "box": [50, 10, 40, 30]}]),
        r"object 1 \(ellipse\) in .*val_0000.xml has bndbox 51 11 40 30 \(xmin ymin xmax ymax\)",
    ),
    "outside_image": (
        detection_formats.voc_xml("val_0000.jpg", 128, 96, [{"name": "ellipse", "box": [200, 10, 240, 30]}]),
        r"object 1 \(ellipse\) in .*val_0000.xml has bndbox 201 11 240 30, outside its 128x96 image",
    ),
    "unknown_class": (
        detection_formats.voc_xml("val_0000.jpg", 128, 96, [{"name": "hexagon", "box": [1, 1, 20, 20]}]),
        r"object 1 in .*val_0000.xml is a 'hexagon', which is not among the classes \['ellipse', 'rectangle', "
        r"'triangle'\] \(the object names of the training annotations\)",
    ),
    "missing_image": (
        detection_formats.voc_xml("elsewhere.jpg", 128, 96, []),  # and no val_0000.jpg either (removed below)
        r"the image of .*val_0000.xml is missing: .*JPEGImages/elsewhere.jpg does not exist",
    ),
    "size_differs": (
        detection_formats.voc_xml("val_0000.jpg", 100, 96, []),
        r"image .*val_0000.jpg is 128x96 but .*val_0000.xml says 100x96",
    ),
}


@pytest.mark.parametrize("case", [*VOC_CASES, "missing_annotation", "missing_list"])
def test_bad_voc_files_are_named_in_one_sentence(voc_shapes, tmp_path, case):
    root = tmp_path / "VOC2007"
    shutil.copytree(voc_shapes[0], root)
    xml = root / "Annotations" / "val_0000.xml"
    if case in VOC_CASES:
        xml.write_text(VOC_CASES[case][0])
        message = VOC_CASES[case][1]
        if case == "missing_image":
            (root / "JPEGImages" / "val_0000.jpg").unlink()
    elif case == "missing_annotation":
        xml.unlink()
        message = r"annotation file .*val_0000.xml does not exist \(its id is listed in .*ImageSets/Main/val.txt\)"
    else:
        (root / "ImageSets" / "Main" / "val.txt").unlink()
        message = r"ImageSets/Main/val.txt does not exist: data.root must be a VOCdevkit/VOC2007-style folder"
    with pytest.raises(UserError, match=message):
        dm = voc(root)
        dm.val_set[0]  # the image's size is checked when it is decoded


def test_voc_refuses_instance_masks_and_bad_class_names(voc_shapes):
    with pytest.raises(UserError, match="Pascal VOC XML annotations hold boxes only"):
        VocDetectionDataModule(root=str(voc_shapes[0]), masks=True)
    with pytest.raises(UserError, match=r"data.class_names=\['a', 'a'\] must name each class once"):
        VocDetectionDataModule(root=str(voc_shapes[0]), class_names=["a", "a"])
    with pytest.raises(UserError, match=r"data.num_classes=5 but the VOC-format data .* has 3 object classes"):
        voc(voc_shapes[0], num_classes=5)


# --- folds --------------------------------------------------------------------------------------------------------
def test_folds_pool_train_and_val_and_keep_the_test_split(yolo_shapes, voc_shapes):
    for make, root in ((yolo, yolo_shapes[0]), (voc, voc_shapes[0])):
        plain = make(root)
        pool = sorted(plain.train_set.indices + plain.val_set.indices)
        vals = []
        for fold in range(3):
            dm = make(root, folds=3, fold=fold)
            assert sorted(dm.train_set.indices + dm.val_set.indices) == pool
            assert dm.test_set.indices == plain.test_set.indices
            vals.append(set(dm.val_set.indices))
        assert set.union(*vals) == set(pool) and sum(map(len, vals)) == len(pool)
    with pytest.raises(UserError, match="data.fold=1 chooses a fold, but data.folds is null"):
        YoloDetectionDataModule(root=str(yolo_shapes[0]), fold=1)


# --- training -----------------------------------------------------------------------------------------------------
def train_overrides(model: str, data: str, root: Path) -> list[str]:
    """The command of the README (``model=... data=... data.root=...``) with the test suite's small sizes."""
    return [f"model={model}", f"data={data}", f"data.root={root}", *MODELS[model][1:], *TINY, "debug=fdr"]


@pytest.mark.parametrize(("model", "data", "shapes"), [("fasterrcnn", "yolo_detection", "yolo_shapes"),
                                                       ("retinanet", "voc_detection", "voc_shapes")])  # fmt: skip
def test_a_detector_trains_on_each_format(make_config, request, model, data, shapes):
    root = request.getfixturevalue(shapes)[0]
    metrics = train(make_config("train", train_overrides(model, data, root)))
    assert np.isfinite(metrics["train/loss"]) and {"val/map", "test/map"} <= metrics.keys()


# --- real data ----------------------------------------------------------------------------------------------------
DATA_DIR = Path(os.environ.get("DATA_DIR", "/nonexistent"))
HAS_PENNFUDAN = (DATA_DIR / "PennFudanPed" / "PedMasks").is_dir()


def pennfudan_samples() -> list[tuple[str, Path, list[dict]]]:
    """The real PennFudan images with their pedestrians' boxes, from the instance masks as the PennFudan reader
    takes them (the images themselves are copied, not decoded)."""
    from torchvision.io import ImageReadMode, decode_image

    from visiontrain.data.pennfudan_detection import instances_from_mask

    samples = []
    for image in sorted((DATA_DIR / "PennFudanPed" / "PNGImages").glob("*.png")):
        mask = decode_image(str(DATA_DIR / "PennFudanPed" / "PedMasks" / f"{image.stem}_mask.png"), ImageReadMode.GRAY)
        _, boxes = instances_from_mask(mask[0])
        objects = [{"class": 0, "name": "person", "box": box} for box in boxes.tolist()]
        samples.append((image.name, image, objects))
    return samples


@pytest.mark.real_data
@pytest.mark.skipif(not HAS_PENNFUDAN, reason="DATA_DIR does not hold PennFudanPed")
@pytest.mark.parametrize(("model", "data"), [("fasterrcnn", "yolo_detection"), ("retinanet", "voc_detection")])
def test_real_pennfudan_written_in_each_format_trains(tmp_path, model, data):
    samples = pennfudan_samples()
    assert len(samples) == 170 and sum(len(objects) for _, _, objects in samples) == 423
    splits = {"train": samples[:110], "val": samples[110:140], "test": samples[140:]}
    root = tmp_path / ("PennFudanYOLO" if data == "yolo_detection" else "VOCdevkit/VOC2007")
    for split, part in splits.items():
        if data == "yolo_detection":
            detection_formats.write_yolo_split(root, split, part)
        else:
            detection_formats.write_voc_split(root, split, part)
    if data == "yolo_detection":
        detection_formats.write_yolo_yaml(root, names=["person"])
        dm = yolo(root)
    else:
        dm = voc(root)
    assert dm.spec.class_names == ("person",)
    targets = read_back(dm.test_set)
    for name, _, objects in splits["test"]:
        assert_same_objects(targets[name], objects, lambda o: 1)
    overrides = ["trainer.accelerator=cpu", *QUIET, *train_overrides(model, data, root)]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert np.isfinite(metrics["train/loss"]) and {"val/map", "test/map"} <= metrics.keys()
