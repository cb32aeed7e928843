"""CIFAR-10 for real: the decoded-image cache, test splits smaller than 10,000, the fast recipe and its bench.

Real-data tests skip unless DATA_DIR holds cifar10/ (the cifar2png layout of the shared copy).
"""

from __future__ import annotations

import ast
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import formats
from visiontrain.data.cifar10 import CIFAR10_CLASSES, CIFAR10DataModule, png_files

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DATA_DIR", "/nonexistent"))
HAS_CIFAR10 = (DATA_DIR / "cifar10" / "train").is_dir() and (DATA_DIR / "cifar10" / "test").is_dir()
needs_cifar10 = pytest.mark.skipif(not HAS_CIFAR10, reason="DATA_DIR does not hold cifar10/{train,test}")


def cifar_png(png_dir: Path, cache_dir: Path | None, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(
        data_dir=str(png_dir.parent / "no-archive-here"),
        png_dir=str(png_dir),
        num_classes=10,
        num_channels=3,
        image_size=32,
        download=False,
        cache_dir=str(cache_dir) if cache_dir else None,
        **{"val_size": 20, **kwargs},
    )


# --- the decoded-image cache -----------------------------------------------------------------------
def test_second_start_reads_the_cache_and_a_changed_file_rebuilds_it(tmp_path):
    png = formats.write_cifar_png(tmp_path / "png", n_train=120, n_test=30)
    cache = tmp_path / "cache"
    first = cifar_png(png, cache)
    first.setup("fit")
    assert first.cache_used == {"train": False, "test": False}
    assert len(list(cache.glob("*.pt"))) == 2

    second = cifar_png(png, cache)
    second.setup("fit")
    assert second.cache_used == {"train": True, "test": True}
    assert torch.equal(second.train_set.images, first.train_set.images)
    assert torch.equal(second.test_set.labels, first.test_set.labels)

    # rewrite one training image with other pixels: its size/mtime change, the train cache is rebuilt
    changed = sorted((png / "train" / "cat").iterdir())[0]
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = cifar_png(png, cache, val_size=0)
    third.setup("fit")
    assert third.cache_used == {"train": False, "test": True}
    assert (third.train_set.images == 7).all(dim=(1, 2, 3)).sum() == 1
    assert len(list(cache.glob("*.pt"))) == 2  # the stale train cache was replaced, not kept beside

    # a removed file changes the listing: rebuilt again, one image fewer
    next((png / "test" / "dog").iterdir()).unlink()
    fourth = cifar_png(png, cache)
    fourth.setup("fit")
    assert fourth.cache_used == {"train": True, "test": False}
    assert len(fourth.test_set) == 29


def test_no_cache_dir_decodes_every_time_and_writes_nothing(tmp_path):
    png = formats.write_cifar_png(tmp_path / "png", n_train=80, n_test=10)
    dm = cifar_png(png, None)
    dm.setup("fit")
    assert dm.cache_used == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["png"]


def test_an_unreadable_cache_file_is_decoded_again(tmp_path):
    png = formats.write_cifar_png(tmp_path / "png", n_train=80, n_test=10)
    cifar_png(png, tmp_path / "cache").setup("fit")
    for path in (tmp_path / "cache").glob("*.pt"):
        path.write_bytes(b"not a torch file")
    dm = cifar_png(png, tmp_path / "cache")
    dm.setup("fit")
    assert dm.cache_used == {"train": False, "test": False}
    assert len(dm.train_set) == 60 and len(dm.test_set) == 10


def test_a_cache_changed_on_disk_is_decoded_again_never_trained_on(tmp_path, caplog):
    """Bytes changed inside a cache file that still loads, or another split's file copied over it: the checksum
    and the key stored with the arrays tell, and the split is decoded again from the PNGs."""
    png = formats.write_cifar_png(tmp_path / "png", n_train=80, n_test=10)
    first = cifar_png(png, tmp_path / "cache")
    first.setup("fit")
    (train_file,) = (tmp_path / "cache").glob("*-train-*.pt")
    (test_file,) = (tmp_path / "cache").glob("*-test-*.pt")
    entry = torch.load(train_file, weights_only=True)
    entry["images"][3, 0, 5, 5] ^= 0xFF  # one pixel of one image, the file otherwise intact
    torch.save(entry, train_file)
    test_file.write_bytes(train_file.read_bytes())  # a whole file in the wrong place
    with caplog.at_level(logging.WARNING):
        again = cifar_png(png, tmp_path / "cache")
        again.setup("fit")
    assert again.cache_used == {"train": False, "test": False}
    assert caplog.text.count("does not match its checksum") == 2
    assert torch.equal(again.train_set.images, first.train_set.images)
    assert torch.equal(again.test_set.images, first.test_set.images)
    third = cifar_png(png, tmp_path / "cache")  # written again, whole: the next start uses it
    third.setup("fit")
    assert third.cache_used == {"train": True, "test": True}


def test_small_unbalanced_test_split_and_no_validation_split_are_accepted(tmp_path, caplog):
    png = formats.write_cifar_png(tmp_path / "png", n_train=60, n_test=30)
    for path in sorted((png / "test" / "airplane").iterdir())[1:]:
        path.unlink()  # airplane keeps one test image
    dm = cifar_png(png, tmp_path / "cache", val_size=0)
    with caplog.at_level(logging.INFO, logger="visiontrain.data.in_memory"):
        dm.setup("fit")
    assert dm.val_set is None and dm.val_dataloader() == []
    assert len(dm.train_set) == 60
    counts = torch.bincount(dm.test_set.labels, minlength=10)
    assert counts[0] == 1 and counts.sum() == len(dm.test_set) < 30
    text = caplog.text
    assert f"60 train / 0 val (seed 12345) / {len(dm.test_set)} test images (the official test split has 10000" in text
    assert f"CIFAR-10 test images per class: {counts.tolist()}" in text


def test_the_archive_is_still_read_without_a_cache(datasets, tmp_path):
    dm = CIFAR10DataModule(
        data_dir=str(datasets), num_classes=10, num_channels=3, image_size=32, download=False, val_size=50,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    dm.setup("fit")
    assert dm.cache_used == {} and not (tmp_path / "cache").exists()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (450, 50, 100)


# --- the real folder ---------------------------------------------------------------------------------
@needs_cifar10
def test_real_folder_counts_and_class_order():
    train_files, train_labels = png_files(DATA_DIR / "cifar10" / "train")
    test_files, test_labels = png_files(DATA_DIR / "cifar10" / "test")
    assert (len(train_files), len(test_files)) == (50000, 1000)
    assert torch.bincount(torch.tensor(train_labels)).tolist() == [5000] * 10
    assert sum(torch.bincount(torch.tensor(test_labels)).tolist()) == 1000
    for files, labels in ((train_files, train_labels), (test_files, test_labels)):
        assert all(CIFAR10_CLASSES[label] == path.parent.name for path, label in zip(files, labels))
    assert CIFAR10_CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --- the fast recipe's parts -----------------------------------------------------------------------
TINY = ["model=airbench", "model.net.widths=[8,16,16]", "model.optimizer.lr=0.2"]


def test_whitening_is_set_from_training_images_once_and_checkpoints_load_weights_only(make_config):
    from visiontrain.cli.train import train

    overrides = ["data=cifar10", "data.val_size=100", "data.batch_size=64", "data.cache_dir=null", *TINY,
                 "trainer.max_epochs=1", "trainer.limit_train_batches=2"]  # fmt: skip
    cfg = make_config("train", overrides)
    train(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    assert int(state["net.whitened"]) == 1
    weight = state["net.whiten.weight"]
    assert weight.shape == (24, 3, 2, 2) and torch.allclose(weight[:12], -weight[12:])
    assert checkpoint["hyper_parameters"]["tta"] == "flip" and checkpoint["hyper_parameters"]["bias_lr_scale"] == 64

    from visiontrain.models.airbench import AirbenchNet

    net = AirbenchNet(widths=(8, 16, 16))
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    assert net.data_initialised and not net.init_from_batch(torch.randn(10, 3, 32, 32))  # never redone
    assert torch.equal(net.whiten.weight, weight)


def test_whitening_filters_decorrelate_patches():
    from visiontrain.models.airbench import patches, whitening_weights

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(200, 1, 32, 32, generator=generator)
    images = torch.cat([base, 0.5 * base + 0.1 * torch.randn(200, 2, 32, 32, generator=generator)], 1)
    weights = whitening_weights(images, 2, eps=0.0)
    flat = patches(images, 2).flatten(1)
    out = flat @ weights[:12].flatten(1).T
    covariance = out.T @ out / len(out)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-2)


def test_flip_tta_and_bias_learning_rate_groups():
    from functools import partial

    from visiontrain.models.airbench import AirbenchNet
    from visiontrain.tasks.classification import ClassificationModule

    net = AirbenchNet(widths=(8, 16, 16))
    module = ClassificationModule(
        net, partial(torch.optim.SGD, lr=0.5, momentum=0.85, nesterov=True, weight_decay=0.002), 10,
        tta="flip", bias_lr_scale=64.0, decay_norm_and_bias=True,
    )  # fmt: skip
    module.eval()
    images = torch.randn(4, 3, 32, 32)
    expected = (net(images) + net(images.flip(-1))) / 2
    assert torch.allclose(module.evaluation_logits(images), expected)
    assert not torch.allclose(module(images), expected)  # forward (predict, export) stays plain
    groups = module.parameter_groups()
    optimizer = partial(torch.optim.SGD, lr=0.5, weight_decay=0.002)(groups)
    weights, biases = optimizer.param_groups
    assert biases["lr_scale"] == 64.0 and biases["weight_decay"] == pytest.approx(0.002 / 64)
    assert all(p.ndim <= 1 for p in biases["params"]) and all(p.ndim > 1 for p in weights["params"])
    assert not any(p is net.whiten.weight for g in groups for p in g["params"])  # fixed, not trained
    from visiontrain.errors import UserError

    with pytest.raises(UserError, match="model.tta='mirror'"):
        ClassificationModule(net, partial(torch.optim.SGD, lr=0.1), 10, tta="mirror")


def test_channels_last_changes_the_memory_format_not_the_results():
    from functools import partial

    from visiontrain.models.airbench import AirbenchNet
    from visiontrain.tasks.classification import ClassificationModule

    torch.manual_seed(0)
    plain_net, nhwc_net = AirbenchNet(widths=(8, 16, 16)), AirbenchNet(widths=(8, 16, 16))
    nhwc_net.load_state_dict(plain_net.state_dict())
    plain, nhwc = (ClassificationModule(net, partial(torch.optim.SGD, lr=0.1), 10, channels_last=cl)
                   for net, cl in ((plain_net, False), (nhwc_net, True)))  # fmt: skip
    for module in (plain, nhwc):
        module.eval()
    conv = nhwc.net.layers[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.net.layers[0].conv1.weight.is_contiguous()
    images = torch.randn(4, 3, 32, 32)
    assert torch.allclose(nhwc(images), plain(images), atol=1e-5)
    # the same parameter names and values: checkpoints move between the two
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), nhwc.state_dict().values()))


def test_lookahead_ends_on_the_slow_weights():
    from types import SimpleNamespace

    from visiontrain.callbacks.lookahead import Lookahead

    net = torch.nn.Linear(2, 1)
    module = SimpleNamespace(net=net, device=torch.device("cpu"))
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=7)
    lookahead = Lookahead(every=5)
    lookahead.on_train_start(trainer, module)
    start = net.weight.detach().clone()
    for step in range(1, 8):
        with torch.no_grad():
            net.weight.add_(1.0)  # an "optimizer step"
        trainer.global_step = step
        lookahead.on_train_batch_end(trainer, module, None, None, step - 1)
        if step == 5:
            decay = 0.95**5 * (5 / 7) ** 3
            assert torch.allclose(net.weight, start + (1 - decay) * 5)
    # the last step (7, not a multiple of 5) resets the network to the slow weights of step 5
    assert torch.allclose(net.weight, start + (1 - 0.95**5 * (5 / 7) ** 3) * 5)
    assert set(lookahead.state_dict()["slow"]) == {"weight", "bias"}


# --- the plain-loop bench ----------------------------------------------------------------------------
def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_plain_loop_shares_only_the_data_and_the_network_with_the_recipe():
    modules = imported_modules(PROJECT_ROOT / "bench" / "cifar10_plain.py")
    ours = {m for m in modules if m.split(".")[0] == "visiontrain"}
    assert ours == {"visiontrain.data.cifar10", "visiontrain.models.airbench"}
    assert not {m.split(".")[0] for m in modules} & {"lightning", "hydra", "omegaconf", "torchmetrics"}


def test_plain_loop_trains_on_tensors():
    import sys

    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    import cifar10_plain

    (train_x, train_y), (test_x, test_y) = formats.cifar_splits(256, 64)
    data = tuple(torch.from_numpy(a).long() if a.ndim == 1 else torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
                 for a in (train_x, train_y, test_x, test_y))  # fmt: skip
    seen = []
    cifar10_plain.train(data, epochs=2, batch_size=64, widths=(8, 16, 16), lr=0.2,
                        on_epoch=lambda e, net: seen.append((e, cifar10_plain.evaluate(net, *data[2:]))))  # fmt: skip
    assert [e for e, _ in seen] == [1, 2] and all(0 <= acc <= 1 for _, acc in seen)


@needs_cifar10
@pytest.mark.real_data
def test_fast_recipe_short_real_run_beats_chance(tmp_path):
    from tests.conftest import QUIET
    from visiontrain.cli.train import train
    from visiontrain.runs.config import compose_config

    start = time.perf_counter()
    cfg = compose_config(
        "train",
        ["experiment=cifar10_fast", f"paths.data_dir={DATA_DIR}", "data.download=false", "trainer.accelerator=cpu",
         "logger=none", *QUIET, "model.net.widths=[16,32,32]", "data.batch_size=256", "model.optimizer.lr=1.0",
         "trainer.max_epochs=1", "trainer.limit_train_batches=24"],
        tmp_path / "run",
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.25, metrics  # chance is 0.1; measured 0.334
    print(f"24 steps of batch 256 in {time.perf_counter() - start:.0f} s: test/acc {metrics['test/acc']:.3f}")
