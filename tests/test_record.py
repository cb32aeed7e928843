"""The run record never lies (issue #26): resume refuses what would change the training, takes the rest and records
it; config.yaml says the precision that ran."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from tests.conftest import run_cli
from tests.test_cli import assert_one_sentence_error


def test_resume_refuses_overrides_that_change_what_was_trained(copied_classifier, tmp_path, datasets):
    run = copied_classifier
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    for change in ("model.optimizer.lr=0.9", "model.net.width=16", "data.batch_size=8", "seed=3"):
        result = run_cli("train.py", [f"resume={run}", change], cwd=tmp_path, data_dir=datasets)
        assert_one_sentence_error(
            result, f"resume={run} continues the run as it was trained, and {change} would change what it trains",
            f"python train.py ckpt_path={run / 'checkpoints' / 'last.ckpt'} {change}",
        )  # fmt: skip
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before  # nothing touched


def test_resume_takes_what_does_not_change_the_training_and_records_it(copied_classifier, tmp_path, datasets):
    run = copied_classifier
    original = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    # the run's own values typed again are no change; another logger does not change what is trained
    args = [f"resume={run}", "model.net.width=8", "logger=tensorboard"]
    result = run_cli("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorboard" in OmegaConf.load(run / "config.yaml").logger  # recorded as what this attempt ran with
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list(OmegaConf.load(run / ".hydra" / "before_resume" / "1" / "overrides.yaml")) == list(original)
    assert list(OmegaConf.load(run / ".hydra" / "overrides.yaml"))[-1] == "logger=tensorboard"


def test_the_record_says_the_precision_that_ran(make_config):
    from visiontrain.cli.train import train

    cfg = make_config("train", ["trainer.precision=16-mixed", "debug=fdr", "model.net.width=8", "data.val_size=100"])
    train(cfg)  # Lightning runs fp16 AMP as bf16-mixed on a CPU
    from pathlib import Path

    assert OmegaConf.load(Path(cfg.paths.output_dir) / "config.yaml").trainer.precision == "bf16-mixed"
    cfg = make_config("train", ["trainer.precision=32", "debug=fdr", "model.net.width=8", "data.val_size=100"])
    train(cfg)
    assert str(OmegaConf.load(Path(cfg.paths.output_dir) / "config.yaml").trainer.precision) == "32"


def test_an_empty_class_is_one_sentence_for_every_classification_source(tmp_path, make_config, caplog):
    """A CIFAR-10 PNG export with train/dog/ emptied is refused at set-up, naming the class (data=imagefolder
    refuses an empty class folder through torchvision); a class missing from the test split only is a warning."""
    import logging

    import pytest

    from tests import formats
    from visiontrain.cli.train import train
    from visiontrain.errors import UserError

    png = formats.write_cifar_png(tmp_path / "cifar10_png", n_train=200, n_test=40)
    for image in (png / "train" / "dog").iterdir():
        image.unlink()
    cifar = ["data=cifar10", f"data.png_dir={png}", "data.data_dir=/nowhere", "data.download=false", "data.val_size=20"]
    cfg = make_config("train", [*cifar, "debug=fdr"])
    with pytest.raises(UserError, match=r"CIFAR-10: class dog has no training images \(dog has test images\)"):
        train(cfg)

    # a class missing from the test split only: a warning, the run trains and tests the other classes
    formats.write_cifar_png(png, n_train=200, n_test=40)
    for image in (png / "test" / "cat").iterdir():
        image.unlink()
    with caplog.at_level(logging.WARNING):
        train(make_config("train", [*cifar, "debug=fdr"]))
    assert "CIFAR-10: no test images of cat; their test scores are left out" in caplog.text


def test_a_full_disk_while_checkpointing_is_one_sentence_and_keeps_the_written_ones(tmp_path, datasets, monkeypatch):
    import errno

    from tests.test_run_integrity import RUN
    from visiontrain.runs import checkpoint_io

    real_save, calls = checkpoint_io.torch.save, []

    def save(obj, f, *args, **kwargs):  # epoch 1 writes one file (last.ckpt links to it); the disk is full after
        calls.append(f)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", save)
    result = run_cli("train.py", RUN, cwd=tmp_path, data_dir=datasets)
    monkeypatch.undo()
    assert_one_sentence_error(result, "no space left on the device to write", "the checkpoints already written are")
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]  # no .tmp left
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
