"""Weights from names and local files: matching by name, prefixes, shapes, strictness, refusals. Nothing downloads."""

from __future__ import annotations

import json
import logging
import urllib.error

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.test_train import DATA
from visiontrain.cli.train import train
from visiontrain.errors import UserError
from visiontrain.models import weights
from visiontrain.models.resnet import build_resnet
from visiontrain.models.smp import build_smp_model
from visiontrain.models.timm_classifier import build_timm_classifier
from visiontrain.serving import inference

IMAGEFOLDER = DATA["imagefolder"]  # 3 classes of 32 px images


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision ResNet-18 state dict as torchvision publishes it (1000 ImageNet classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Every download fails as it does without a network, with empty caches."""
    import segmentation_models_pytorch.encoders as smp_encoders
    import timm.models._hub

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse)
    monkeypatch.setattr(smp_encoders, "hf_hub_download", refuse)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_head_of_another_shape_is_skipped_and_the_rest_loaded_bit_exact(resnet18_file, tmp_path, suffix, caplog):
    source = torch.load(resnet18_file, weights_only=True)
    path = resnet18_file
    if suffix == ".safetensors":
        path = tmp_path / "resnet18.safetensors"
        save_file(source, str(path))
    with caplog.at_level(logging.INFO, logger="visiontrain"):
        model = build_resnet(18, num_classes=5, cifar_stem=False, weights=str(path))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (5, 512)
    assert "loaded 120 tensors, skipped 2 (shape differs), 0 missing" in caplog.text
    assert "fc.weight: (1000, 512) -> (5, 512)" in caplog.text


def test_wrapper_prefixes_are_stripped(resnet18_file, tmp_path):
    source = torch.load(resnet18_file, weights_only=True)
    wrapped = tmp_path / "wrapped.pt"  # DataParallel around a compiled network, nested as other trainers save it
    torch.save({"model_state_dict": {f"module._orig_mod.{k}": v for k, v in source.items()}, "epoch": 3}, wrapped)
    model = torchvision.models.resnet18(num_classes=1000)
    report = weights.load_file(model, wrapped, strict=True)
    assert len(report.loaded) == len(source) and report.alignment == ("", "")
    assert torch.equal(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])


def test_sub_prefixes_are_aligned_across_model_families(resnet18_file, tmp_path):
    source = torch.load(resnet18_file, weights_only=True)
    # a ResNet file into a UNet's encoder (smp's encoder_weights as a file)
    unet = build_smp_model("Unet", "resnet18", encoder_weights=str(resnet18_file), num_classes=2, encoder_depth=4,
                           decoder_channels=[32, 16, 8, 4])  # fmt: skip
    assert torch.equal(unet.encoder.layer2[0].conv1.weight, source["layer2.0.conv1.weight"])
    # that UNet's visiontrain checkpoint (net. prefix, metric states beside it) into a ResNet classifier
    checkpoint = tmp_path / "unet.ckpt"
    state = {f"net.{k}": v for k, v in unet.state_dict().items()} | {"val_miou_best.max_value": torch.tensor(0.5)}
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.6", "epoch": 24}, checkpoint)
    classifier = build_resnet(18, num_classes=3, cifar_stem=False)
    report = weights.load_file(classifier, checkpoint)
    assert report.alignment == ("encoder.", "")
    assert report.missing == ["fc.weight", "fc.bias"]
    assert all(name.startswith("decoder.") or name.startswith("segmentation_head.") for name in report.unexpected)
    assert torch.equal(classifier.bn1.running_mean, unet.encoder.bn1.running_mean)


def test_detector_backbone_from_a_file(tmp_path):
    from visiontrain.models.detection import build_detector

    path = tmp_path / "mobilenet_v3_large.pth"
    source = torchvision.models.mobilenet_v3_large().state_dict()
    torch.save(source, path)
    detector = build_detector("fasterrcnn", "mobilenet_v3_large_320_fpn", num_classes=1, weights_backbone=str(path))
    body = detector.model.backbone.body.state_dict()
    assert torch.equal(body["3.block.1.0.weight"], source["features.3.block.1.0.weight"])


def test_init_strict_refuses_a_mismatch(resnet18_file):
    with pytest.raises(UserError, match=r"does not match the network exactly \(2 tensors of another shape"):
        weights.load_file(torchvision.models.resnet18(num_classes=4), resnet18_file, strict=True)


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    pickled = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet18(), pickled)  # a whole pickled module: not loadable with weights_only
    with pytest.raises(UserError, match=rf"{pickled} is not a state dict that loads safely with weights_only=True"):
        weights.read_state_dict(pickled)
    numbers = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, numbers)
    with pytest.raises(UserError, match=rf"{numbers} holds no state dict"):
        weights.read_state_dict(numbers)
    with pytest.raises(UserError, match="weights file .*missing.pth does not exist"):
        weights.read_state_dict(tmp_path / "missing.pth")


def test_weights_by_name_offline_is_one_sentence_naming_the_file_option(offline):
    with pytest.raises(UserError) as err:
        build_resnet(18, num_classes=3, cifar_stem=False, weights="IMAGENET1K_V1")
    message = str(err.value)
    assert "could not download torchvision weights resnet18.IMAGENET1K_V1 (URLError)" in message
    assert "model.weights=/path/to/resnet18-f37072fd.pth" in message and "\n" not in message
    with pytest.raises(UserError, match=r"could not download timm weights for resnet18 .*model.weights_file="):
        build_timm_classifier("resnet18", num_classes=3, pretrained=True)
    with pytest.raises(
        UserError, match=r"could not load resnet18 encoder weights 'imagenet' .*encoder_weights=/path/to"
    ):
        build_smp_model("Unet", "resnet18", encoder_weights="imagenet", num_classes=2)


def test_timm_pretrained_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("resnet18", num_classes=1000).state_dict()
    path = tmp_path / "model.safetensors"
    save_file(source, str(path))
    model = build_timm_classifier("resnet18", num_classes=3, pretrained=True, weights_file=str(path))
    assert torch.equal(model.state_dict()["layer3.0.conv1.weight"], source["layer3.0.conv1.weight"])
    assert model.get_classifier().out_features == 3
    with pytest.raises(UserError, match="model.pretrained=false"):
        build_timm_classifier("resnet18", num_classes=3, weights_file=str(path))


def test_rebuilding_from_a_checkpoint_reads_no_pretrained_weights(make_config, resnet18_file, tmp_path, offline):
    cfg = make_config("train", ["model=timm", "model.pretrained=true", "model/scheduler=cosine", *IMAGEFOLDER])
    config = weights.without_pretrained(OmegaConf.to_container(cfg.model, resolve=True))
    assert config["net"]["pretrained"] is False and config["weights_file"] is None
    instantiate(config)  # offline: would fail if it tried to download
    unet = make_config("train", ["experiment=pennfudan_unet", "model.net.encoder_weights=imagenet"])
    instantiate(weights.without_pretrained(OmegaConf.to_container(unet.model, resolve=True)))


def test_init_from_a_run_and_its_rebuilt_checkpoint(make_config, resnet18_file, tmp_path, offline):
    """A run starts from a local weights file; its checkpoint then initialises another run and rebuilds
    for inference without the file (the checkpoint's weights are the network's)."""
    local = tmp_path / "resnet18.pth"
    local.write_bytes(resnet18_file.read_bytes())
    first = make_config(
        "train",
        ["model=resnet", f"model.weights={local}", "model.net.cifar_stem=false", "test=false", "logger=none",
         "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", *IMAGEFOLDER],
    )  # fmt: skip
    train(first)
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_model_path"]
    local.unlink()
    loaded = inference.load_checkpoint(best)  # resolves model.weights to the deleted file: must not read it
    assert loaded.task == "classification"
    # init_from: the checkpoint's network into one with 5 classes; strict refuses the new head
    strict = make_config("train", ["model=resnet", "model.net.cifar_stem=false", f"init_from={best}",
                                   "init_strict=true", *IMAGEFOLDER[:2], "data.num_classes=5"])  # fmt: skip
    with pytest.raises(UserError, match="fc.weight: \\(3, 512\\) -> \\(5, 512\\)"):
        train(strict)


def test_best_checkpoint_resolver_picks_the_newest_finished_run(make_config, tmp_path):
    runs = tmp_path / "outputs" / "pennfudan_unet" / "runs"
    for stamp, best in (("2026-01-01_10-00-00", "old.ckpt"), ("2026-01-02_10-00-00", "new.ckpt")):
        (runs / stamp).mkdir(parents=True)
        (runs / stamp / best).write_bytes(b"x")
        (runs / stamp / "metrics.json").write_text(json.dumps({"best_model_path": str(runs / stamp / best)}))
    (runs / "2026-01-03_10-00-00").mkdir()  # an unfinished run: no metrics.json yet
    cfg = make_config("train", [f"paths.log_dir={tmp_path}/outputs", "init_from=${best_checkpoint:pennfudan_unet}"])
    assert cfg.init_from == str(runs / "2026-01-02_10-00-00" / "new.ckpt")
    missing = make_config("train", [f"paths.log_dir={tmp_path}/outputs", "init_from=${best_checkpoint:pet_unet}"])
    with pytest.raises(Exception) as err:
        missing.init_from  # noqa: B018
    assert "no finished pet_unet run with a best checkpoint under" in str(err.value)
    assert "run python train.py experiment=pet_unet first" in str(err.value)


def test_best_checkpoint_error_is_one_line_on_the_command_line(tmp_path):
    from tests.conftest import run_cli

    overrides = ["experiment=pet_unet", f"paths.log_dir={tmp_path}", "init_from=${best_checkpoint:pennfudan_unet}"]
    result = run_cli("train.py", overrides, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no finished pennfudan_unet run with a best checkpoint under {tmp_path}/pennfudan_unet/runs; "
        "run python train.py experiment=pennfudan_unet first."
    )


def test_a_detector_trained_with_weights_is_rebuilt_without_them(make_config, monkeypatch, tmp_path):
    """torchvision freezes a detector's BatchNorm when weights are loaded; the checkpoint still rebuilds
    (with ordinary BatchNorm, the same computation in eval mode) without the weights."""
    from collections import OrderedDict

    from torchvision.models._api import WeightsEnum

    from visiontrain.artifact import CONFIG_KEY

    fresh = torchvision.models.mobilenet_v3_large().state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *args, **kwargs: OrderedDict(fresh))
    cfg = make_config("train", ["model=fasterrcnn", "model.net.variant=mobilenet_v3_large_320_fpn",
                                "model.net.weights_backbone=IMAGENET1K_V1"])  # fmt: skip
    resolved = OmegaConf.to_container(cfg.model, resolve=True)
    trained = instantiate(resolved).eval()
    assert not any(k.endswith("num_batches_tracked") for k in trained.state_dict() if ".backbone.body." in k)
    path = tmp_path / "detector.ckpt"
    stored = {"model_resolved": resolved, "preprocessing": {"resize": 64}, "task": "detection"}
    torch.save({"state_dict": trained.state_dict(), "class_names": list("abcdefghij"), CONFIG_KEY: stored}, path)

    def refuse(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    loaded = inference.load_checkpoint(path)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = trained.net.model.backbone(images)
        rebuilt = loaded.module.net.model.backbone(images)
    assert all(torch.allclose(expected[k], rebuilt[k], atol=1e-5) for k in expected)


def test_ssdlite_refuses_a_backbone_file_in_one_sentence(tmp_path):
    from torchvision import models

    from visiontrain.models.detection import build_detector

    weights = tmp_path / "mobilenet_v3_large.pth"
    torch.save(models.mobilenet_v3_large().state_dict(), weights)
    with pytest.raises(UserError, match="SSDlite cannot take a backbone weights file"):
        build_detector("ssdlite", "mobilenet_v3_large", num_classes=1, weights_backbone=str(weights))


def test_timm_weights_file_adapts_the_first_conv_to_other_input_channels(tmp_path):
    import timm
    from timm.models import adapt_input_conv

    from visiontrain.models.timm_classifier import build_timm_classifier

    source = timm.create_model("resnet18", num_classes=10)
    file = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), file)
    net = build_timm_classifier("resnet18", 5, in_channels=1, pretrained=True, weights_file=str(file))
    assert torch.equal(net.conv1.weight, adapt_input_conv(1, source.conv1.weight.detach()))  # summed over RGB
    assert torch.equal(net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
