"""The wheel's copy of the configs; everything else is in pyproject.toml.

conf/ stays at the project root, where users and the docs find it, and a checkout or an editable install reads it
there (visiontrain.runs.config.config_dir). A wheel has no project root: building one copies conf/ into the package
as visiontrain/conf. A copy rather than a symlink (some file systems and platforms have none) or a package-dir
mapping (setuptools then installs an editable project through an import finder whose namespace packages
pkgutil cannot list, and Hydra would no longer find our sweeper under hydra_plugins).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).parent / "conf"


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "visiontrain" / "conf"
            shutil.copytree(CONFIGS, target, dirs_exist_ok=True, ignore=not_a_config)


def not_a_config(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if not name.endswith(".yaml") and not (Path(folder) / name).is_dir()]


setup(cmdclass={"build_py": BuildPyWithConfigs})
