"""Mistyped overrides: one sentence with "did you mean", before Hydra creates a run folder (issue #12)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from visiontrain.cli.checks import check_overrides
from visiontrain.errors import UserError
from visiontrain.runs import command_line


def refusal(args: list[str], config_name: str = "train") -> str:
    with pytest.raises(UserError) as caught:
        check_overrides(config_name, args)
    return str(caught.value)


def test_a_mistyped_key_gets_the_near_key():
    message = refusal(["trainer.max_epoch=1"])
    assert message == "trainer.max_epoch is not a config key; did you mean trainer.max_epochs?"
    assert "did you mean model.optimizer.lr?" in refusal(["model.lr=0.1"])
    assert "did you mean trainer.max_epochs?" in refusal(["trainr.max_epochs=1"])


def test_an_added_key_the_trainer_does_not_take_is_refused_naming_the_trainer():
    message = refusal(["+trainer.max_epoch=1"])
    assert "trainer.max_epoch is not an argument of lightning.pytorch.Trainer" in message
    assert "did you mean trainer.max_epochs?" in message
    # a Trainer argument the config does not set yet: + is the way
    assert "+trainer.fast_dev_run=true" in refusal(["trainer.fast_dev_run=true"])


def test_a_mistyped_group_option_gets_the_near_option():
    message = refusal(["model=resnt"])
    assert message.startswith("model=resnt is not an option of model; did you mean model=resnet? (options: ")
    assert "did you mean model/optimizer=adamw?" in refusal(["model/optimizer=adamww"])
    assert "did you mean model=unet?" in refusal(["-m", "model=resnet,unt"])
    assert "did you mean model/optimizer=adamw?" in refusal(["model/optimzer=adamw"])


def test_other_entry_points_are_checked_against_their_own_config():
    assert "did you mean output?" in refusal(["input=x", "ouput=y"], "predict")
    assert "did you mean export.dynamic_batch?" in refusal(["ckpt_path=x", "export.dynamic_bach=true"], "export")


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "model.optimizer.lr=0.1,0.05"],
        ["model=unet", "+model.net.encoder_depth=3"],
        ["experiment=cifar10_resnet18", "model.net.depth=34"],
        ["hydra.run.dir=x"],
        ["debug=fdr", "trainer.fast_dev_run=false"],
        ["+trainer.fast_dev_run=1", "++trainer.max_epochs=2", "~callbacks.lr_monitor"],
        ["-m", "hparams_search=mnist_optuna", "hydra/launcher=joblib", "hydra/sweeper=basic"],
        ["-m", "model=resnet,unet", "model.net.encoder_name=resnet34"],
        ["paths.data_dir='/tmp/a folder'", "tags=[a,b]", "callbacks=[default,ema]"],
        ["--cfg", "job", "--resolve", "--config-name", "eval", "ckpt_path=x.ckpt"],
        ["--help"],
    ],
)
def test_valid_commands_pass(args):
    check_overrides("train", args)


def test_flags_are_not_overrides():
    args = ["-m", "--config-dir", "extra", "seed=1", "--cfg", "job", "--info", "config", "--package=model"]
    typed = command_line.read(args)  # Hydra's own parser
    assert typed.overrides == ["seed=1"]
    assert typed.flags == {"multirun": True, "config_dir": "extra", "cfg": "job", "info": "config", "package": "model"}
    assert typed.multirun and not typed.runs_the_task and typed.composes_our_config


def test_the_command_refuses_a_typo_before_hydra_creates_a_run_folder(tmp_path):
    result = run_cli("train.py", ["trainer.max_epoch=1"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: trainer.max_epoch is not a config key; did you mean trainer.max_epochs?" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_base_configs_are_not_options():
    with pytest.raises(UserError, match="model=_base/detector is not an option of model"):
        check_overrides("train", ["model=_base/detector"])
    with pytest.raises(UserError, match="model/_base holds configs that other configs build on"):
        check_overrides("train", ["model/_base=detector"])
    check_overrides("train", ["model=fasterrcnn", "data=pennfudan", "model.net.variant=resnet50_fpn"])
