"""A user extends visiontrain without editing it: their own config folder (--config-dir) and their own code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests import formats
from tests.conftest import QUIET, run_cli
from visiontrain.cli.checks import check_overrides
from visiontrain.errors import UserError

# the README's example ("Your own configs and code")
USER_MODULE = '''
from visiontrain.data.mnist import MNISTDataModule


class InvertedMNIST(MNISTDataModule):
    """MNIST with dark digits on a light background."""

    name = "Inverted MNIST"
    mean = (1 - 0.1307,)

    def read_split(self, train):
        images, labels = super().read_split(train)
        return 255 - images, labels
'''
USER_CONFIG = """\
# conf/data/mnist.yaml, with our own class
defaults:
  - mnist
  - _self_

_target_: my_datamodules.InvertedMNIST
"""


def write_user_project(root: Path) -> Path:
    (root / "my_configs" / "data").mkdir(parents=True)
    (root / "my_configs" / "data" / "my_data.yaml").write_text(USER_CONFIG)
    (root / "my_datamodules.py").write_text(USER_MODULE)
    return root


def test_a_config_folder_and_a_module_of_the_users_train_through_train_py(tmp_path, monkeypatch):
    project = write_user_project(tmp_path / "my_project")
    data = formats.write_mnist(tmp_path / "data", n_train=200, n_test=50)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [".", os.environ.get("PYTHONPATH")])))
    args = ["--config-dir=my_configs", "data=my_data", "debug=fdr", "data.val_size=50", "data.download=false", *QUIET]
    result = run_cli("train.py", args, cwd=project, data_dir=data)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Inverted MNIST: 150 train / 50 val" in result.stdout + result.stderr
    (run,) = (project / "outputs" / "debug" / "runs").iterdir()
    assert run.name.endswith("_my_data_simple_cnn")
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data._target_ == "my_datamodules.InvertedMNIST" and cfg.data.num_classes == 10
    assert "test/acc" in json.loads((run / "metrics.json").read_text())


def test_the_users_options_and_keys_are_checked_with_theirs(tmp_path, monkeypatch):
    monkeypatch.chdir(write_user_project(tmp_path))
    check_overrides("train", ["--config-dir=my_configs", "data=my_data", "data.val_size=50"])
    check_overrides("train", ["--config-dir", "my_configs", "data=my_data"])
    with pytest.raises(UserError, match="did you mean data=my_data"):
        check_overrides("train", ["--config-dir=my_configs", "data=my_dat"])
    with pytest.raises(UserError, match="did you mean data.val_size"):
        check_overrides("train", ["--config-dir=my_configs", "data=my_data", "data.val_sise=50"])
    with pytest.raises(UserError, match="not an option of data"):  # without the folder there is no my_data
        check_overrides("train", ["data=my_data"])
