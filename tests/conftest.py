"""Shared fixtures: small datasets in real formats, config composition, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests import formats
from visiontrain.runs.config import compose_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# keep tests quiet and light: no rich widgets, one thread is plenty for tiny tensors
QUIET = ["extras.print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory) -> None:
    """What runs remember between starts (e.g. the masks already checked) goes to a folder of the test session's,
    not the user's ~/.cache; subprocesses inherit it."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> Path:
    """One folder holding every synthetic dataset, laid out as DATA_DIR would be."""
    root = tmp_path_factory.mktemp("data")
    formats.write_mnist(root)
    formats.write_cifar_archive(root)
    formats.write_cifar_png(root / "cifar10_png")
    formats.write_imagefolder(root / "folders")
    return root


@pytest.fixture
def make_config(tmp_path, datasets):
    """``make_config("train", ["model=resnet", ...])`` -> a composed config writing into tmp_path/run."""

    def make(config_name: str = "train", overrides: list[str] | None = None, quiet: bool = True) -> DictConfig:
        base = [f"paths.data_dir={datasets}"]
        if config_name in ("train", "eval"):
            base += ["logger=tensorboard", "trainer.accelerator=cpu"]
        quiet_overrides = (QUIET if config_name == "train" else QUIET[:1]) if quiet else []
        return compose_config(config_name, base + quiet_overrides + list(overrides or []), tmp_path / "run")

    return make


def run_cli(script: str, args: list[str], cwd: Path, data_dir: Path | None = None, timeout: int = 300):
    """Run ``python <script> args`` as a user would, from ``cwd`` (so outputs/ lands there)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    if data_dir is not None:
        env["DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
