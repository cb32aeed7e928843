"""Training recipes: per-image augmentation policies in the batch pipeline, random erasing, MixUp/CutMix with
label smoothing, the EMA of the weights (checkpoints, resume) and the debug=augment image grid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visiontrain.callbacks.ema import EMA
from visiontrain.cli.train import train
from visiontrain.data.batch_transforms import BatchAugment
from visiontrain.errors import UserError

RUN = ["data=mnist", "data.val_size=100", "data.batch_size=16", "data.eval_batch_size=100", "trainer.max_epochs=1",
       "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false"]  # fmt: skip


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment", "augmix"])
def test_batch_policy_augments_each_image_on_its_own(policy, channels):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (channels, 24, 24), dtype=torch.uint8)
    batch = image.expand(12, -1, -1, -1).contiguous()  # twelve copies of one image
    augment = BatchAugment([0.0] * channels, [1.0] * channels, augment=policy)
    out = augment(batch, train=True)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert 0.0 <= out.min() and out.max() <= 1.0  # uint8 policies, then /255 (mean 0, std 1)
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 1, "identical images got identical augmentations: parameters drawn once per batch"
    assert torch.equal(augment(batch, train=False), batch.float() / 255)  # no augmentation outside training


def test_batch_random_erasing_erases_about_the_given_share_of_images():
    torch.manual_seed(0)
    batch = torch.full((200, 3, 16, 16), 200, dtype=torch.uint8)
    out = BatchAugment([0.0] * 3, [1.0] * 3, random_erasing=0.5)(batch, train=True)
    erased = (out == 0).flatten(1).any(1)  # erased to 0 = the mean after normalisation
    assert 70 <= int(erased.sum()) <= 130
    assert torch.allclose(out[~erased], torch.tensor(200 / 255))
    with pytest.raises(UserError, match="data.random_erasing=1.5"):
        BatchAugment([0.0], [1.0], random_erasing=1.5)


def test_bad_policy_options_fail_in_one_sentence():
    with pytest.raises(UserError, match="data.augment='randaug'"):
        BatchAugment([0.0], [1.0], augment="randaug")
    with pytest.raises(UserError, match="data.augment_options.randaugment"):
        BatchAugment([0.0], [1.0], augment="randaugment", augment_options={"randaugment": {"magnitud": 3}})


def test_mixup_cutmix_soft_targets_sum_to_one_and_accuracy_counts_hard_labels(make_config):
    cfg = make_config("train", ["model.mixup_alpha=0.2", "model.cutmix_alpha=1.0", "model.label_smoothing=0.1"])
    module = instantiate(cfg.model)
    module._trainer = SimpleNamespace(global_step=0, log_every_n_steps=50, should_stop=False)  # not a step that logs
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, logits, targets):
            seen.append((logits.detach(), targets))
            return logits.sum() * 0

    module.criterion = Recording()
    torch.manual_seed(0)
    labels = torch.arange(10)
    images = torch.rand(10, 1, 28, 28)
    for _ in range(4):
        module.training_step((images, labels), 0)
    hits = 0
    for logits, targets in seen:
        assert targets.shape == (10, 10) and targets.dtype.is_floating_point
        assert torch.allclose(targets.sum(1), torch.ones(10))
        assert not torch.equal(targets, torch.nn.functional.one_hot(labels, 10).float())  # mixed
        hits += int((logits.argmax(1) == labels).sum())
    assert module.train_metrics["acc"].compute() == pytest.approx(hits / 40)
    # label smoothing on top of the soft targets: torch's cross-entropy takes both
    smoothed = instantiate(cfg.model).criterion(seen[0][0], seen[0][1])
    expected = -(seen[0][1] * 0.9 + 0.01) * seen[0][0].log_softmax(1)
    assert smoothed == pytest.approx(float(expected.sum(1).mean()), rel=1e-5)


def test_recipe_command_and_debug_augment_write_the_augmented_grid(make_config, tmp_path):
    recipe = ["data.augment=randaugment", "data.random_erasing=0.25", "model.mixup_alpha=0.2",
              "model.cutmix_alpha=1.0", "model.label_smoothing=0.1"]  # fmt: skip
    cfg = make_config("train", RUN + recipe + ["debug=augment", "trainer.detect_anomaly=false"])
    metrics = train(cfg)
    assert 0.0 <= metrics["train/acc"] <= 1.0 and metrics["train/loss"] > 0
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (grid,) = events.Images("train/augmented_batch")
    assert grid.step == 0 and grid.width == 8 * (28 + 2) + 2 and grid.height == 2 * (28 + 2) + 2  # 16 images


class WeightRecorder(Callback):
    """Records the raw parameters after every optimizer step (shared list: Hydra builds a new instance)."""

    steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def expected_ema(start: dict[str, torch.Tensor] | None, steps, decay: float) -> dict[str, torch.Tensor]:
    ema = dict(start) if start is not None else dict(steps[0])
    for weights in steps[0 if start is not None else 1 :]:
        ema = {n: decay * ema[n] + (1 - decay) * weights[n] for n in ema}
    return ema


# no scheduler: a OneCycle schedule cannot be extended by the second epoch of the resumed run
EMA_RUN = [
    "model.scheduler=null",
    "callbacks=ema",
    "callbacks.ema.decay=0.5",
    "+callbacks.recorder._target_=tests.test_recipes.WeightRecorder",
]


def split_loss(cfg, state_dict: dict[str, torch.Tensor], split: str = "val") -> float:
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    dataset = getattr(datamodule, f"{split}_set")
    images, labels = dataset.__getitems__(range(len(dataset)))
    model = instantiate(cfg.model)
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model.eval()(datamodule.augment(images, False)), labels))


@pytest.mark.parametrize(("stored", "validate"), [("ema", True), ("raw", False)])
def test_ema_checkpoint_holds_the_average_and_resume_continues_it(make_config, stored, validate):
    WeightRecorder.steps.clear()
    options = [f"callbacks.ema.checkpoint={stored}", f"callbacks.ema.validate={validate}"]
    cfg = make_config("train", RUN + EMA_RUN + options + ["test=true"])
    metrics = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    ema_key, raw_key = ("state_dict", "current_model_state") if stored == "ema" else ("ema_state_dict", "state_dict")
    ema, raw = checkpoint[ema_key], checkpoint[raw_key]
    assert len(WeightRecorder.steps) == 3
    for name, value in expected_ema(None, WeightRecorder.steps, 0.5).items():
        assert torch.allclose(ema[name], value, atol=1e-6), name
        assert torch.equal(raw[name], WeightRecorder.steps[-1][name]), name
    assert all(not torch.allclose(ema[n], raw[n]) for n in WeightRecorder.steps[0] if n.endswith("weight"))
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 3
    # validation ran on the weights chosen by callbacks.ema.validate
    assert metrics["val/loss"] == pytest.approx(split_loss(cfg, ema if validate else raw), rel=1e-4)
    assert metrics["val/loss"] != pytest.approx(split_loss(cfg, raw if validate else ema), rel=1e-4)
    # the test after training used the weights of the checkpoint's state_dict
    assert metrics["test/loss"] == pytest.approx(split_loss(cfg, checkpoint["state_dict"], "test"), rel=1e-4)

    # resume for a second epoch: the average continues from the saved one, the raw weights from the raw ones
    saved = {n: ema[n] for n in WeightRecorder.steps[0]}
    WeightRecorder.steps.clear()
    resumed = make_config("train", RUN + EMA_RUN + options + [f"ckpt_path={last}", "trainer.max_epochs=2"])
    train(resumed)
    after = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    for name, value in expected_ema(saved, WeightRecorder.steps, 0.5).items():
        assert torch.allclose(after[ema_key][name], value, atol=1e-6), name
    assert int(after["averaging_state"]["n_averaged"]) == 6


def test_ema_options_are_checked():
    with pytest.raises(UserError, match="callbacks.ema.decay=1.5"):
        EMA(decay=1.5)
    with pytest.raises(UserError, match="callbacks.ema.checkpoint='both'"):
        EMA(checkpoint="both")
    with pytest.raises(UserError, match="validate=false with callbacks.ema.checkpoint=ema"):
        EMA(checkpoint="ema", validate=False)
