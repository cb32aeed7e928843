"""End-to-end training through the real entry points on small real-format datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from visiontrain.cli.eval import evaluate
from visiontrain.cli.train import train
from visiontrain.errors import UserError

FAST = ["data.batch_size=16", "data.eval_batch_size=64"]
DATA = {
    "mnist": ["data=mnist", "data.val_size=100"],
    "cifar10": ["data=cifar10", "data.val_size=100"],
    "cifar10_png": [
        "data=cifar10",
        "data.val_size=100",
        "data.png_dir=${paths.data_dir}/cifar10_png",
        "data.data_dir=${paths.data_dir}/no_archive_here",
    ],
    "imagefolder": [
        "data=imagefolder",
        "data.root=${paths.data_dir}/folders",
        "data.num_classes=3",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=8",
    ],
}
MODELS = {
    "simple_cnn": ["model=simple_cnn"],
    "resnet": ["model=resnet", "model.net.depth=18"],
    "torchvision": ["model=torchvision", "model.net.name=mobilenet_v3_small"],
}


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_data_and_model(make_config, data, model):
    cfg = make_config("train", DATA[data] + MODELS[model] + FAST + ["debug=fdr"])
    if model == "torchvision" and data == "mnist":
        # a 3-channel network with 1-channel data fails at start, in one sentence
        with pytest.raises(UserError, match=r"MobileNetV3 cannot take MNIST's 1x28x28 \(channels x H x W\) images"):
            train(cfg)
        return
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "test/acc", "test/loss"} <= metrics.keys()
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/loss"] > 0


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_train_checkpoint_eval_and_tensorboard(make_config, tmp_path):
    cfg = make_config(
        "train", DATA["mnist"] + FAST + ["trainer.max_epochs=2", "trainer.log_every_n_steps=5", "model.net.width=8"]
    )
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)

    # learnable synthetic digits: two short epochs are plenty
    assert metrics["test/acc"] > 0.9
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["test/acc"] == pytest.approx(metrics["test/acc"])
    assert {"val/acc", "val/acc_best", "train/loss", "test/acc_top5", "test/acc_class/7"} <= record.keys()
    best = Path(record["best_model_path"])
    assert best.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()

    # checkpoints hold only tensors and plain values: they load with weights_only=True
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["num_classes"] == 10
    assert checkpoint["visiontrain_config"]["model"]["net"]["_target_"].endswith("SimpleCNN")
    assert checkpoint["class_names"] == [str(d) for d in range(10)]

    acc = events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_step", "val/acc", "val/loss", "test/acc", "test/acc_class/3"} <= scalars
    # the learning rate sits beside the training curves; no epoch staircase: TensorBoard plots against the step
    assert {"train/lr/weights", "train/lr/no_decay"} <= scalars and "epoch" not in scalars
    assert {"test/confusion_matrix", "test/predictions"} <= set(acc.Tags()["images"])
    hparams = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert {"test/acc", "val/acc_best"} <= {m.name.tag for m in hparams.experiment.metric_infos}
    # the handful of choices that tell runs apart, not the whole config
    assert {"model", "data", "lr", "batch_size", "max_epochs", "seed"} <= {
        h.name for h in hparams.experiment.hparam_infos
    }
    assert len(hparams.experiment.hparam_infos) <= 12
    val_acc = [e.value for e in acc.Scalars("val/acc")]
    assert len(val_acc) == 2

    # eval.py on the best checkpoint reproduces test/acc, with the model config read from the checkpoint
    eval_cfg = make_config("eval", DATA["mnist"] + FAST + [f"ckpt_path={best}"])
    eval_cfg.paths.output_dir = str(tmp_path / "eval")
    eval_metrics = evaluate(eval_cfg)
    assert eval_metrics["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)

    # a model override that does not fit the checkpoint is refused in one sentence
    eval_cfg = make_config("eval", DATA["mnist"] + [f"ckpt_path={best}", "model.net.width=64"])
    with pytest.raises(UserError, match=r"does not fit the model config \(size mismatch for net.0.weight"):
        evaluate(eval_cfg)


def test_resume_from_last_checkpoint_continues_at_the_next_epoch(make_config, tmp_path):
    # an interrupted 2-epoch run: early stopping with a threshold any real run passes stops it after epoch 0
    stop = [
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.monitor=val/acc",
        "+callbacks.stop.mode=max",
        "+callbacks.stop.stopping_threshold=0.0",
    ]
    common = DATA["mnist"] + FAST + ["trainer.max_epochs=2", "test=false"]
    first = make_config("train", common + stop)
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0
    steps_per_epoch = saved["global_step"]

    resumed = make_config("train", common + [f"ckpt_path={last}"])
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    final = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 1 and final["global_step"] == 2 * steps_per_epoch
    # the OneCycle schedule continued where it stopped rather than restarting
    assert final["lr_schedulers"][0]["last_epoch"] == 2 * steps_per_epoch
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] < 1e-4

    # a longer run cannot reuse a OneCycle schedule sized for the shorter one: said at start, not at step N
    longer = make_config("train", DATA["mnist"] + FAST + ["trainer.max_epochs=3", f"ckpt_path={last}"])
    longer.paths.output_dir = str(tmp_path / "longer")
    with pytest.raises(UserError, match="schedule of 62 steps.*now needs 93"):
        train(longer)


def test_wrong_num_classes_fails_at_start(make_config):
    cfg = make_config("train", DATA["mnist"] + ["model.num_classes=7", "model.net.num_classes=7"])
    with pytest.raises(UserError, match="configured for 7 classes but MNIST has 10"):
        train(cfg)
    cfg = make_config("train", DATA["mnist"] + ["model.net.num_classes=7"])
    with pytest.raises(UserError, match=r"SimpleCNN outputs \(7,\) scores per image but MNIST has 10 classes"):
        train(cfg)


def test_unknown_torchvision_model_is_one_sentence(make_config):
    cfg = make_config("train", DATA["cifar10"] + ["model=torchvision", "model.net.name=resnet_9000"])
    with pytest.raises(Exception) as err:
        instantiate(cfg.model)
    assert "model.net.name='resnet_9000' is not a torchvision classifier" in str(err.value)


def test_bf16_mixed_precision_on_cpu(make_config):
    cfg = make_config(
        "train",
        DATA["cifar10"]
        + FAST
        + [
            "model=resnet",
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
        ],
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.mark.slow  # inductor compiles the network on the CPU: ~35 s on 2 cores
def test_compile_on_cpu_keeps_checkpoint_keys(make_config):
    cfg = make_config(
        "train",
        DATA["mnist"]
        + FAST
        + [
            "model.compile=true",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=8",
            "trainer.limit_val_batches=1",
            "test=false",
        ],
    )
    train(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(not k.startswith("net._orig_mod") for k in checkpoint["state_dict"])
    model = instantiate(cfg.model)
    model.load_state_dict(checkpoint["state_dict"])  # an uncompiled model takes the compiled run's weights
