"""model.channels_last (true | false | auto): what auto resolves to per family, NHWC weights and inputs when on, the
same outputs either way, checkpoints moving between the two formats, and every model config defaulting to auto."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from visiontrain.errors import UserError
from visiontrain.models import memory_format
from visiontrain.models.airbench import AirbenchNet
from visiontrain.models.simple_cnn import SimpleCNN
from visiontrain.tasks.classification import ClassificationModule

SGD = partial(torch.optim.SGD, lr=0.1)
CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "model"


def nhwc(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def tiny_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16)


def tiny_detector() -> nn.Module:
    from visiontrain.models.detection import build_detector

    return build_detector("fasterrcnn", "mobilenet_v3_large_320_fpn", 1, min_size=64, max_size=96)


def smp_unet() -> nn.Module:
    from visiontrain.models.smp import build_smp_model

    return build_smp_model("Unet", "resnet18", None, 3, 2, encoder_depth=3, decoder_channels=[16, 8, 4])


def segmentation(arch: str) -> nn.Module:
    from visiontrain.models.torchvision_segmentation import build_torchvision_segmentation

    return build_torchvision_segmentation(arch, "mobilenet_v3_large", 2)


AUTO_EXPECTED = {
    "simple_cnn": (lambda: SimpleCNN(1, 10, 28), True),
    "airbench": (lambda: AirbenchNet(widths=(8, 16, 16)), True),
    "resnet18 (CIFAR stem)": (lambda: __import__("visiontrain.models.resnet").models.resnet.build_resnet(18), True),
    "mobilenet_v3_small": (lambda: __import__("torchvision").models.mobilenet_v3_small(num_classes=3), True),
    "vision transformer": (tiny_vit, False),
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), False),
    "smp unet (measured slower)": (smp_unet, False),
    "lraspp (measured slower)": (lambda: segmentation("lraspp"), False),
    "deeplabv3": (lambda: segmentation("deeplabv3"), True),
}


@pytest.mark.parametrize("family", list(AUTO_EXPECTED))
def test_auto_resolves_per_family_as_the_rule_says(family):
    build, expected = AUTO_EXPECTED[family]
    net = build()
    assert memory_format.resolve("auto", net) is expected
    assert memory_format.resolve(True, net) is True and memory_format.resolve(False, net) is False


def test_auto_for_the_detector_follows_its_measurement():
    net = tiny_detector()
    expected = "FasterRCNN" not in memory_format.SLOWER_IN_CHANNELS_LAST
    assert memory_format.network_name(net) == "FasterRCNN"
    assert memory_format.resolve("auto", net) is expected


def test_an_unknown_value_is_one_sentence():
    with pytest.raises(UserError, match=r"model.channels_last='yes': choose true, false or auto"):
        ClassificationModule(SimpleCNN(1, 10, 28), SGD, 10, channels_last="yes")


def test_every_model_config_defaults_to_auto():
    for path in sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "_base").glob("*.yaml")):
        text = path.read_text()
        if "_target_: visiontrain.tasks." not in text:
            continue  # built on _base/, which holds the key
        assert "\nchannels_last: auto\n" in text, path


def test_weights_and_inputs_are_nhwc_when_on_and_the_outputs_are_the_same():
    torch.manual_seed(0)
    plain_net, nhwc_net = SimpleCNN(1, 10, 28), SimpleCNN(1, 10, 28)
    nhwc_net.load_state_dict(plain_net.state_dict())
    plain = ClassificationModule(plain_net, SGD, 10, channels_last=False).eval()
    on = ClassificationModule(nhwc_net, SGD, 10, channels_last="auto").eval()
    assert on.channels_last and not plain.channels_last
    assert nhwc(on.net[4].weight) and plain.net[4].weight.is_contiguous()  # net[0] has one input channel: both
    seen = []
    on.net[4].register_forward_pre_hook(lambda module, args: seen.append(nhwc(args[0])))
    images = torch.randn(4, 1, 28, 28)
    assert torch.allclose(on(images), plain(images), atol=1e-5)
    assert seen == [True]
    # the same names, shapes and values: a state dict is a state dict
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), on.state_dict().values()))


def test_segmentation_outputs_and_training_step_are_the_same_in_both_formats():
    from visiontrain.tasks.segmentation import SegmentationModule

    torch.manual_seed(0)
    nets = [smp_unet(), smp_unet()]
    nets[1].load_state_dict(nets[0].state_dict())
    modules = [SegmentationModule(net, SGD, 2, channels_last=cl) for net, cl in zip(nets, (False, True))]
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    losses, grads = [], []
    for module in modules:
        module.train()
        loss = module.loss(module(images), masks)
        loss.backward()
        losses.append(loss.detach())
        grads.append(module.net.encoder.conv1.weight.grad)
    assert nhwc(modules[1].net.encoder.conv1.weight)
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-4)


def test_detection_takes_the_option_for_its_weights_and_detects_the_same():
    from visiontrain.tasks.detection import DetectionModule

    torch.manual_seed(0)
    nets = [tiny_detector(), tiny_detector()]
    nets[1].load_state_dict(nets[0].state_dict())
    plain = DetectionModule(nets[0], SGD, 1, channels_last=False)
    on = DetectionModule(nets[1], SGD, 1, channels_last=True)
    conv = next(m for m in on.net.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1)
    assert nhwc(conv.weight)
    torch.manual_seed(1)
    images = [torch.rand(3, 80, 96), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}] * 2
    torch.manual_seed(2)
    plain_losses = plain.net(images, targets)
    torch.manual_seed(2)
    on_losses = on.net(images, targets)
    for name, value in plain_losses.items():
        assert torch.allclose(value, on_losses[name], rtol=1e-4, atol=1e-5), name
    plain.eval(), on.eval()
    with torch.no_grad():
        expected, got = plain.net(images), on.net(images)
    for a, b in zip(expected, got):
        assert torch.allclose(a["scores"], b["scores"], atol=1e-4)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-2)


@pytest.mark.parametrize("saved_on", [True, False])
def test_a_checkpoint_loads_into_the_other_format(make_config, tmp_path, saved_on):
    """A run trained in one format; its checkpoint's weights load into the model built in the other, which keeps
    its own format and computes the same outputs."""
    from hydra.utils import instantiate

    from visiontrain.cli.train import train

    cfg = make_config(
        "train",
        [f"model.channels_last={str(saved_on).lower()}", "data.val_size=100", "trainer.max_epochs=1",
         "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false", "logger=none",
         "callbacks.learning_curves=null"],
    )  # fmt: skip
    metrics = train(cfg)
    checkpoint = torch.load(metrics_path(cfg, metrics), map_location="cpu", weights_only=True)
    saved = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    assert nhwc(saved["4.weight"]) is saved_on  # torch.save keeps the format of what it saves
    cfg.model.channels_last = not saved_on
    other = instantiate(cfg.model)
    other.load_state_dict(checkpoint["state_dict"])
    assert nhwc(other.net[4].weight) is (not saved_on)
    cfg.model.channels_last = saved_on
    same = instantiate(cfg.model)
    same.load_state_dict(checkpoint["state_dict"])
    images = torch.randn(3, 1, 28, 28)
    other.eval(), same.eval()
    with torch.no_grad():
        assert torch.allclose(other(images), same(images), atol=1e-5)


def metrics_path(cfg, metrics) -> Path:
    checkpoints = sorted(Path(cfg.paths.output_dir, "checkpoints").glob("*.ckpt"))
    assert checkpoints, metrics
    return checkpoints[0]
