"""Test-time augmentation (visiontrain.tasks.tta): the same computation in the task modules' evaluation and in a
checkpoint's serving; eval.py tta= and predict.py tta= end to end (in process: a CLI start costs more than the rest
of this file on a loaded 2-core machine); modes a task lacks are one sentence."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_iou

from visiontrain.cli.eval import evaluate
from visiontrain.cli.predict import predict
from visiontrain.cli.train import train
from visiontrain.data import preprocessing
from visiontrain.data.mnist import MNISTDataModule
from visiontrain.errors import UserError
from visiontrain.serving.base import Logits
from visiontrain.serving.classification import ClassificationServing
from visiontrain.serving.detection import Detections, DetectionServing
from visiontrain.serving.images import read_image
from visiontrain.serving.inference import load_checkpoint
from visiontrain.serving.segmentation import SegmentationServing
from visiontrain.tasks import tta
from visiontrain.tasks.classification import ClassificationModule
from visiontrain.tasks.segmentation import SegmentationModule

SGD = partial(torch.optim.SGD, lr=0.1)


def test_classification_flip_is_the_mean_logits_of_image_and_mirror():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    images = torch.randn(2, 3, 8, 8)
    expected = (net(images) + net(torch.flip(images, dims=[3]))) / 2
    module = ClassificationModule(net, SGD, 5, tta="none").eval()
    assert torch.allclose(module.evaluation_logits(images), net(images))
    module.set_tta("flip")
    assert torch.allclose(module.evaluation_logits(images), expected, atol=1e-6)
    run = ClassificationServing().checkpoint_runner(Logits(net), "cpu", "flip")  # what predict.py runs
    assert torch.allclose(run(images), expected, atol=1e-6)


def test_classification_flip_translate_is_airbenchs_six_views():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    images = torch.randn(2, 3, 8, 8)

    def shifted(x: torch.Tensor, step: int) -> torch.Tensor:
        # view[i] = x[i - step] (step 1: content moves down-right), the row or column that falls outside reflected
        for dim in (-2, -1):
            if step == 1:
                x = torch.cat([x.narrow(dim, 1, 1), x.narrow(dim, 0, x.shape[dim] - 1)], dim)
            else:
                x = torch.cat([x.narrow(dim, 1, x.shape[dim] - 1), x.narrow(dim, x.shape[dim] - 2, 1)], dim)
        return x

    def flip(x):
        return (net(x) + net(x.flip(-1))) / 2

    expected = flip(images) / 2 + (flip(shifted(images, 1)) + flip(shifted(images, -1))) / 4
    module = ClassificationModule(net, SGD, 5, tta="flip_translate").eval()
    assert torch.allclose(module.evaluation_logits(images), expected, atol=1e-6)
    assert not torch.allclose(expected, flip(images), atol=1e-3)  # the shifted views count
    run = ClassificationServing().checkpoint_runner(Logits(net), "cpu", "flip_translate")
    assert torch.allclose(run(images), expected, atol=1e-6)


def test_segmentation_flip_scale_is_the_mean_probability_over_views_resized_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 5, padding=2)).eval()
    images = torch.randn(2, 3, 128, 96)
    views = []
    for height, width in ((96, 64), (128, 96), (160, 128)):  # x 0.75, 1, 1.25 at multiples of 32
        scaled = F.interpolate(images, size=(height, width), mode="bilinear", antialias=height < 128)
        for mirrored in (False, True):
            x = torch.flip(scaled, dims=[3]) if mirrored else scaled
            p = net(x).softmax(dim=1)
            p = torch.flip(p, dims=[3]) if mirrored else p
            views.append(F.interpolate(p, size=(128, 96), mode="bilinear"))
    expected = torch.stack(views).mean(dim=0)

    module = SegmentationModule(net, SGD, 3, tta="flip_scale").eval()
    with torch.no_grad():
        out = module.evaluation_logits(images)
        served = SegmentationServing().checkpoint_runner(Logits(net), "cpu", "flip_scale")(images)
    assert out.shape == (2, 3, 128, 96)
    assert torch.allclose(out.exp(), expected, atol=1e-5)  # log-probabilities: the losses and argmax take them
    assert torch.allclose(served, out)
    # flip alone: image and mirror at the input's size
    plain = net(images).softmax(1)
    mirror = torch.flip(net(torch.flip(images, dims=[3])).softmax(1), dims=[3])
    module.set_tta("flip")
    with torch.no_grad():
        assert torch.allclose(module.evaluation_logits(images).exp(), (plain + mirror) / 2, atol=1e-5)


class BrightBoxes(nn.Module):
    """A stand-in detector: the bounding box of each image's bright pixels (label 1, score 0.9), plus a fixed box of
    label 2 at the image's top-left corner, which the mirror image places at the other side; masks of the same."""

    detections_per_img = 3

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            bright = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            corner = torch.tensor([0.0, 0.0, 8.0, 8.0])
            masks = torch.zeros(2, 1, *image.shape[1:])
            masks[0, 0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
            masks[1, 0, :8, :8] = 1
            out.append({"boxes": torch.stack([bright, corner]), "labels": torch.tensor([1, 2]),
                        "scores": torch.tensor([0.9, 0.6]), "masks": masks})  # fmt: skip
        return out


def test_detection_flip_maps_the_mirror_boxes_back_and_merges_duplicates():
    image = torch.zeros(3, 40, 64)
    image[:, 10:30, 6:20] = 1.0  # a bright object left of centre
    detector = BrightBoxes()
    boxes = torch.tensor([[6.0, 10.0, 20.0, 30.0]])
    assert torch.equal(tta.mirrored_boxes(boxes, 64), torch.tensor([[44.0, 10.0, 58.0, 30.0]]))
    assert torch.equal(tta.mirrored_boxes(tta.mirrored_boxes(boxes, 64), 64), boxes)

    merged = tta.augmented("detection", "flip", detector, [image])[0]
    # the object, found in both views at the same place once mapped back: one box; the corner box of the mirror
    # image maps to the right-hand corner, no duplicate of the left one: both kept, after the higher score
    assert merged["boxes"][0].tolist() == [6.0, 10.0, 20.0, 30.0] and merged["labels"].tolist() == [1, 2, 2]
    assert sorted(merged["boxes"][1:].tolist()) == [[0.0, 0.0, 8.0, 8.0], [56.0, 0.0, 64.0, 8.0]]
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.6, 0.6])
    right = int(merged["boxes"][:, 0].argmax())
    assert merged["masks"][right, 0, :8, 56:].all() and merged["masks"][right].sum() == 64  # flipped back with it

    served = DetectionServing().checkpoint_runner(Detections(detector), "cpu", "flip")([image, image])
    assert all(torch.equal(out["boxes"], merged["boxes"]) for out in served)


def test_detection_flip_leaves_no_duplicates_above_the_merge_iou():
    generator = torch.Generator().manual_seed(0)

    def detect(images):
        out = []
        for _ in images:
            corners = torch.rand(30, 2, generator=generator) * 50
            sizes = 5 + torch.rand(30, 2, generator=generator) * 20
            scores, labels = torch.rand(30, generator=generator), torch.randint(1, 3, (30,), generator=generator)
            out.append({"boxes": torch.cat([corners, corners + sizes], 1), "scores": scores, "labels": labels})
        return out

    merged = tta.flip_detections(detect, [torch.zeros(3, 64, 64)] * 2, limit=25)
    for prediction in merged:
        assert len(prediction["boxes"]) <= 25 and (prediction["scores"].diff() <= 0).all()
        for label in (1, 2):
            same = prediction["boxes"][prediction["labels"] == label]
            iou = box_iou(same, same).fill_diagonal_(0)
            assert (iou <= tta.MERGE_IOU).all()


def test_modes_a_task_lacks_are_one_sentence():
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(UserError, match=r"^tta=flip_scale is not available for classification models, which take"):
        ClassificationModule(net, SGD, 3).set_tta("flip_scale")
    with pytest.raises(UserError, match=r"^model.tta='mirror': choose one of none, flip, flip_scale\.$"):
        SegmentationModule(net, SGD, 3, tta="mirror")
    with pytest.raises(UserError, match=r"^tta=flip_scale is not available for detection models"):
        tta.checked("detection", "flip_scale")
    with pytest.raises(UserError, match=r"^model.tta=flip_translate is not available for segmentation models"):
        SegmentationModule(net, SGD, 3, tta="flip_translate")


@pytest.fixture(scope="module")
def digits(tmp_path_factory, datasets) -> tuple[Path, Path]:
    """A simple_cnn checkpoint trained briefly on the synthetic digits, and PNG files of 8 test images."""
    from visiontrain.runs.config import compose_config

    root = tmp_path_factory.mktemp("tta")
    overrides = [f"paths.data_dir={datasets}", "data.val_size=100", "extras.print_config=false", "test=false",
                 "callbacks.progress_bar=null", "callbacks.model_summary=null", "trainer.accelerator=cpu",
                 "trainer.max_epochs=1", "model.net.width=8"]  # fmt: skip
    train(compose_config("train", overrides, root / "run"))
    dm = MNISTDataModule(str(datasets), num_classes=10, num_channels=1, image_size=28, download=False, val_size=100)
    dm.setup("test")
    images = root / "images"
    images.mkdir()
    for i in range(8):
        Image.fromarray(dm.test_set.images[i, 0].numpy()).save(images / f"digit_{i}.png")
    return root / "run" / "checkpoints" / "last.ckpt", images


def test_eval_and_predict_with_flip(make_config, digits, datasets, tmp_path):
    ckpt, images = digits
    loaded = load_checkpoint(ckpt)  # the plain network and its preprocessing, to compute the flip by hand
    dm = MNISTDataModule(str(datasets), num_classes=10, num_channels=1, image_size=28, download=False, val_size=100)
    dm.setup("test")
    test_images = dm.augment(dm.test_set.images, train=False)
    with torch.no_grad():
        logits = (loaded.module(test_images) + loaded.module(torch.flip(test_images, dims=[3]))) / 2

    # eval.py ckpt_path=<ckpt> tta=flip: the test split scored on the mean logits of each image and its mirror
    metrics = evaluate(make_config("eval", [f"ckpt_path={ckpt}", "tta=flip", "logger=none"]))
    assert metrics["test/loss"] == pytest.approx(F.cross_entropy(logits, dm.test_set.labels).item(), rel=1e-4)
    assert metrics["test/acc"] == pytest.approx((logits.argmax(1) == dm.test_set.labels).float().mean().item())

    # predict.py ... tta=flip: the same on image files, read and preprocessed as predict.py does
    output = tmp_path / "p"
    predict(make_config("predict", [f"ckpt_path={ckpt}", f"input={images}", f"output={output}", "tta=flip"]))
    with (output / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    transform = preprocessing.transform(loaded.preprocessing)
    batch = torch.stack([transform(read_image(Path(row["file"]))) for row in rows])
    with torch.no_grad():
        probabilities = ((loaded.module(batch) + loaded.module(torch.flip(batch, dims=[3]))) / 2).softmax(dim=1)
    assert len(rows) == 8 and [row["class_1"] for row in rows] == [str(int(c)) for c in probabilities.argmax(1)]
    for row, p in zip(rows, probabilities):
        assert float(row["probability_1"]) == pytest.approx(float(p.max()), abs=1e-6)


def test_unsupported_modes_in_eval_and_predict_are_one_sentence(make_config, digits, tmp_path):
    ckpt, images = digits
    with pytest.raises(UserError, match=r"^tta=flip_scale is not available for classification models"):
        evaluate(make_config("eval", [f"ckpt_path={ckpt}", "tta=flip_scale"]))
    files = [f"input={images}", f"output={tmp_path}"]
    with pytest.raises(UserError, match=r"^tta=flip_scale is not available for classification models"):
        predict(make_config("predict", [f"ckpt_path={ckpt}", *files, "tta=flip_scale"]))
    with pytest.raises(UserError, match=r"^tta=flip runs with checkpoints only"):
        predict(make_config("predict", [f"model_path={ckpt}", *files, "tta=flip"]))
