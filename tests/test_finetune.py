"""Staged fine-tuning: frozen backbone untouched (weights, momentum, weight decay, BatchNorm statistics), discriminative
learning rates under every scheduler, the stage restored on resume, parameter count and per-group lrs logged."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from tests.test_train import DATA
from visiontrain.callbacks.finetune import StagedFinetuning
from visiontrain.models.backbone import backbone_and_head

IMAGEFOLDER = DATA["imagefolder"]  # 3 classes of 32 px images
# SGD with momentum and weight decay on every parameter: a frozen parameter must still not move
RESNET = ["model=resnet", "model.net.cifar_stem=false", "model.decay_norm_and_bias=true", *IMAGEFOLDER]


class Probe(Callback):
    """The network's state at the end of every training epoch, and the stage seen by its first batch."""

    def __init__(self, stop_after_first_batch: bool = False) -> None:
        self.stop_after_first_batch = stop_after_first_batch
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.stage: dict[int, tuple[bool, bool]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.stage[trainer.current_epoch] = (
                pl_module.net.layer1[0].conv1.weight.requires_grad,
                pl_module.net.bn1.training,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.should_stop = trainer.should_stop or self.stop_after_first_batch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


def fit(make_config, tmp_path, max_epochs: int, ckpt_path=None, logger=False):
    seed_everything(0)
    cfg = make_config("train", RESNET)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    probe = Probe(stop_after_first_batch=ckpt_path is not None)  # a resumed run: its first batch tells the stage
    callbacks = [
        StagedFinetuning(unfreeze_at_epoch=2, backbone_lr_scale=0.1, freeze_bn=True),
        probe,
        ModelCheckpoint(
            dirpath=tmp_path / "checkpoints",
            filename="e{epoch}",
            save_top_k=-1,
            monitor=None,
            auto_insert_metric_name=False,
        ),
    ]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = Trainer(
        max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
        callbacks=callbacks, logger=CSVLogger(tmp_path, name="csv") if logger else False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    initial = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return initial, probe, model


def test_backbone_frozen_then_trained_and_the_stage_restored_on_resume(make_config, tmp_path):
    initial, probe, model = fit(make_config, tmp_path, max_epochs=3, logger=True)
    backbone = [k for k in initial if not k.startswith("fc.")]
    for epoch in (0, 1):  # frozen: weights and BatchNorm statistics bit-identical, the head trained
        assert all(torch.equal(probe.states[epoch][k], initial[k]) for k in backbone), epoch
        assert not torch.equal(probe.states[epoch]["fc.weight"], initial["fc.weight"])
    assert not torch.equal(probe.states[2]["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])
    assert not torch.equal(probe.states[2]["bn1.running_mean"], initial["bn1.running_mean"])
    assert probe.stage == {0: (False, False), 1: (False, False), 2: (True, True)}

    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/*/metrics.csv")))))
    trainable = [float(r["finetune/trainable_params"]) for r in rows if r.get("finetune/trainable_params")]
    head = sum(p.numel() for p in model.net.fc.parameters())
    assert trainable == [head, head, sum(p.numel() for p in model.net.parameters())]
    lrs = [(float(r["train/lr/backbone"]), float(r["train/lr/head"])) for r in rows if r.get("train/lr/head")]
    assert lrs and all(backbone_lr == pytest.approx(0.1 * head_lr) for backbone_lr, head_lr in lrs)

    # resumed from the end of epoch 0, epoch 1 is still frozen; from the end of epoch 1, epoch 2 is not
    for saved, epoch, stage in (("e0.ckpt", 1, (False, False)), ("e1.ckpt", 2, (True, True))):
        _, resumed, _ = fit(make_config, tmp_path / saved, max_epochs=3, ckpt_path=tmp_path / "checkpoints" / saved)
        assert resumed.stage[epoch] == stage


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "steplr"])
def test_backbone_learning_rate_is_scaled_at_every_step(make_config, scheduler):
    cfg = make_config("train", [*RESNET, f"model/scheduler={scheduler}", "model.decay_norm_and_bias=false"])
    model = instantiate(cfg.model)
    model.backbone_lr_scale = 0.1
    model._trainer = SimpleNamespace(estimated_stepping_batches=40)
    configured = model.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    assert groups["backbone/no_decay"]["weight_decay"] == 0.0
    backbone, head = backbone_and_head(model.net)
    assert {n for n, _ in head} == {"fc.weight", "fc.bias"} and len(backbone) == 60  # ResNet-18: 62 tensors
    seen = []
    for _ in range(40):
        head_lr = groups["head"]["lr"]
        assert (
            groups["backbone"]["lr"]
            == pytest.approx(0.1 * head_lr)
            == pytest.approx(0.1 * groups["head/no_decay"]["lr"])
        )
        seen.append(head_lr)
        optimizer.step()
        schedule.step()
    assert len(set(seen)) > 1  # the schedule did change the learning rates


def test_finetune_staged_from_the_command_line_config(make_config, tmp_path, caplog):
    import logging

    from visiontrain.cli.train import train

    cfg = make_config("train", [*RESNET, "finetune=staged", "finetune.unfreeze_at_epoch=1", "debug=fdr"])
    with caplog.at_level(logging.INFO, logger="visiontrain"):
        metrics = train(cfg)
    assert "test/acc" in metrics
    assert "epoch 1: backbone frozen, 1539 trainable parameters; learning rates backbone=" in caplog.text


def test_every_family_has_a_backbone_and_a_head():
    import timm
    from torchvision import models

    from visiontrain.models.detection import build_detector
    from visiontrain.models.smp import build_smp_model

    nets = {
        "torchvision classifier": (models.mobilenet_v3_small(num_classes=3), "features.", "classifier."),
        "timm": (timm.create_model("resnet18", num_classes=3), "layer1.", "fc."),
        "smp": (build_smp_model("Unet", "resnet18", num_classes=2), "encoder.", "decoder."),
        "torchvision segmentation": (
            models.segmentation.lraspp_mobilenet_v3_large(num_classes=2, weights_backbone=None),
            "backbone.",
            "classifier.",
        ),
        "detector": (
            build_detector("fasterrcnn", "mobilenet_v3_large_320_fpn", num_classes=1),
            "model.backbone.body.",
            "model.roi_heads.",
        ),
    }
    for family, (net, backbone_prefix, head_prefix) in nets.items():
        backbone, head = backbone_and_head(net)
        assert backbone and head, family
        assert any(n.startswith(backbone_prefix) for n, _ in backbone), family
        assert all(not n.startswith(backbone_prefix) for n, _ in head), family
        assert any(n.startswith(head_prefix) for n, _ in head), family
        assert len(backbone) + len(head) == len(list(net.parameters())), family


def test_detector_backbone_is_the_pretrained_body_not_the_new_fpn_or_extras():
    from visiontrain.models.detection import build_detector

    for family, variant, backbone_prefix, new_prefix in (
        ("fasterrcnn", "mobilenet_v3_large_320_fpn", "model.backbone.body.", "model.backbone.fpn."),
        ("ssdlite", "mobilenet_v3_large", "model.backbone.features.", "model.backbone.extra."),
    ):
        backbone, head = backbone_and_head(build_detector(family, variant, num_classes=1))
        assert all(n.startswith(backbone_prefix) for n, _ in backbone), family
        assert any(n.startswith(new_prefix) for n, _ in head), family


def test_backbone_tensors_the_weights_did_not_fill_are_not_frozen(tmp_path):
    from torchvision import models

    from visiontrain.models.resnet import build_resnet

    weights = tmp_path / "resnet18.pth"
    torch.save(models.resnet18().state_dict(), weights)
    # the CIFAR stem's 3x3 conv1 cannot take the file's 7x7 one: it stays freshly initialised
    net = build_resnet(depth=18, num_classes=3, cifar_stem=True, weights=str(weights))
    callback = StagedFinetuning(unfreeze_at_epoch=1)
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(), current_epoch=0, optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])]
    )
    module = SimpleNamespace(net=net, log=lambda *args, **kwargs: None)
    callback.setup(trainer, module, "fit")
    callback.on_train_epoch_start(trainer, module)
    assert net.conv1.weight.requires_grad  # fresh: trains from the start
    assert not net.layer1[0].conv1.weight.requires_grad and not net.bn1.weight.requires_grad  # loaded: frozen
    assert net.fc.weight.requires_grad  # the head


def test_one_cycle_takes_runs_of_a_few_steps():
    from visiontrain.tasks.schedules import one_cycle

    for total_steps in (1, 2, 3, 4, 5):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = one_cycle(optimizer, total_steps, pct_start=0.25)
        for _ in range(total_steps):
            optimizer.step()
            scheduler.step()
        assert 0 < optimizer.param_groups[0]["lr"] <= 0.1
