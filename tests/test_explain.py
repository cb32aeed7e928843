"""Class activation maps (the grad-cam package): the layer found from the network, maps of the input's size,
eval.py's grid of right and wrong test images and predict.py's overlay per image."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from matplotlib.image import imread
from PIL import Image

from tests.conftest import run_cli
from visiontrain.errors import UserError
from visiontrain.models.airbench import AirbenchNet
from visiontrain.models.simple_cnn import SimpleCNN
from visiontrain.serving.explain import class_maps, target_layer
from visiontrain.serving.inference import load_checkpoint


@pytest.mark.parametrize(
    ("net", "size", "expected"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), 64, "layer4"),
        (lambda: timm.create_model("resnet18", num_classes=10, pretrained=False), 64, "layer4"),
        (lambda: AirbenchNet(widths=[16, 32, 32]), 32, "layers"),
        (lambda: SimpleCNN(in_channels=3, num_classes=10, image_size=32), 32, None),
    ],
)
def test_the_explained_layer_is_the_last_spatial_feature_map(net, size, expected):
    net = net()
    name, module = target_layer(net, torch.rand(1, 3, size, size))
    if expected:
        assert name == expected
    # nothing after it keeps a spatial map: the next module to finish is the pooling or the head
    seen = []
    hook = module.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    net.eval()(torch.rand(1, 3, size, size))
    hook.remove()
    assert len(seen[0]) == 4 and min(seen[0][-2:]) > 1
    assert target_layer(net, torch.rand(1, 3, size, size), name) == (name, module)  # named: the same layer
    with pytest.raises(UserError, match=r"^explain.layer=nothing: the network has no such module"):
        target_layer(net, torch.rand(1, 3, size, size), "nothing")


def test_maps_have_the_inputs_size_are_finite_and_differ_between_classes(trained_classifier):
    model = load_checkpoint(trained_classifier / "checkpoints" / "last.ckpt")
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # class gap 0.05-0.06 over 3 seeds
    for method in ("gradcam", "gradcam_plusplus", "eigencam"):
        maps = class_maps(model.module, images, [3] * 4, method)
        assert maps.shape == (4, 28, 28) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # the evidence for one class is not the evidence for another
    three, seven = (class_maps(model.module, images, [c] * 4, "gradcam") for c in (3, 7))
    assert np.abs(three - seven).mean() > 0.01


def test_eval_draws_right_and_wrong_test_images_and_predict_an_overlay_per_image(
    trained_classifier, datasets, tmp_path
):
    ckpt = trained_classifier / "checkpoints" / "last.ckpt"
    result = run_cli("eval.py", [f"ckpt_path={ckpt}", "data.val_size=100", "logger=csv"], tmp_path, datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    grid = imread(run / "plots" / "explanations.png")
    assert grid.ndim == 3 and grid.shape[1] > 500

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (28, 28), dtype=np.uint8)).save(inputs / f"d{i}.png")
    out = tmp_path / "pred"
    result = run_cli("predict.py", [f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}", "explain=gradcam"],
                     tmp_path, datasets)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for i in range(3):
        picture = np.asarray(Image.open(out / "explanations" / f"d{i}.png"))
        assert picture.shape == (28, 28, 3) and picture.dtype == np.uint8


def test_explaining_an_exported_model_is_one_sentence_and_writes_nothing(trained_classifier, datasets, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    result = run_cli("export.py", [f"ckpt_path={trained_classifier / 'checkpoints' / 'last.ckpt'}", "format=onnx",
                                   f"output={onnx_path}"], tmp_path, datasets)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "pred"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "digit.png")
    result = run_cli("predict.py", [f"model_path={onnx_path}", f"input={tmp_path / 'digit.png'}", f"output={out}",
                                    "explain=gradcam"], tmp_path, datasets)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: explain=gradcam needs the network's gradients: give ckpt_path=" in result.stderr
    assert not out.exists()
