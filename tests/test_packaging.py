"""The package as a wheel installs it: the configs inside, the console script training from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests import formats
from tests.conftest import PROJECT_ROOT
from visiontrain.runs.config import CONFIG_DIR


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the project, so the build leaves nothing in the checkout."""
    project = copy_of_project(tmp_path)
    run([sys.executable, "-m", "pip", "wheel", *OFFLINE, "-w", str(tmp_path / "wheel"), str(project)])
    (wheel,) = (tmp_path / "wheel").glob("visiontrain-*.whl")
    return wheel


OFFLINE = ["--no-deps", "--no-build-isolation", "--check-build-dependencies", "--quiet"]


def copy_of_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(PROJECT_ROOT / "src", project / "src", ignore=ignore)
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(PROJECT_ROOT / name, project / name)
    return project


def venv_with_our_dependencies(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh environment (its python, its site-packages) whose dependencies come from this environment's
    site-packages, added as a plain path line (.pth files there, such as an editable install's finder, are not
    run)."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(run([str(python), "-c", purelib]).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return python, site_packages


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATA_DIR")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def test_no_symlink_reaches_the_configs():
    assert not (PROJECT_ROOT / "src" / "visiontrain" / "conf").exists()
    assert not any(path.is_symlink() for path in (PROJECT_ROOT / "src").rglob("*"))


@pytest.mark.process
def test_an_editable_install_reads_the_configs_of_its_source_tree(tmp_path):
    project = copy_of_project(tmp_path)
    python, _ = venv_with_our_dependencies(tmp_path)
    run([sys.executable, "-m", "pip", "--python", str(python), "install", *OFFLINE, "-e", str(project)])
    where = "from visiontrain.runs.config import CONFIG_DIR; print(CONFIG_DIR)"
    assert Path(run([str(python), "-c", where], env=clean_env(), cwd=tmp_path).stdout.strip()) == project / "conf"
    shown = run(
        [str(python), "-m", "visiontrain.cli.train", "--cfg", "job", "model=resnet"], env=clean_env(), cwd=tmp_path
    )
    assert "visiontrain.models.resnet" in shown.stdout


@pytest.mark.process
def test_the_wheel_carries_the_configs_and_its_console_script_trains_from_any_folder(tmp_path):
    wheel = build_wheel(tmp_path)
    configs = sorted(f"visiontrain/conf/{p.relative_to(CONFIG_DIR)}" for p in Path(CONFIG_DIR).rglob("*.yaml"))
    assert len(configs) > 50
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [c for c in configs if c not in names] == []
    assert "hydra_plugins/visiontrain_optuna/__init__.py" in names

    # a fresh environment holding the wheel's copy
    python, site_packages = venv_with_our_dependencies(tmp_path)
    venv = python.parent.parent
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", wheel])
    env = clean_env()
    where = run([str(python), "-c", "import visiontrain; print(visiontrain.__file__)"], env=env).stdout.strip()
    assert Path(where).resolve() == (site_packages / "visiontrain" / "__init__.py").resolve()

    elsewhere = tmp_path / "elsewhere"
    data = formats.write_mnist(tmp_path / "data", n_train=200, n_test=50)
    args = [
        "debug=fdr",
        f"paths.data_dir={data}",
        "data.val_size=50",
        "data.download=false",
        "extras.print_config=false",
        "callbacks.progress_bar=null",
    ]
    elsewhere.mkdir()
    run([str(venv / "bin" / "visiontrain-train"), *args], cwd=elsewhere, env=env)
    (run_dir,) = (elsewhere / "outputs" / "debug" / "runs").iterdir()
    assert run_dir.name.endswith("_mnist_simple_cnn")
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
    assert OmegaConf.load(run_dir / "config.yaml").data._target_ == "visiontrain.data.mnist.MNISTDataModule"
    # composed from the installed copy of the configs
    hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
    (main,) = [source for source in hydra.runtime.config_sources if source.provider == "main"]
    assert Path(main.path).resolve() == (site_packages / "visiontrain" / "conf").resolve()
