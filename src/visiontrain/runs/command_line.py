"""A command line as Hydra reads it: with Hydra's own parser (``visiontrain.compat.hydra_arguments``), so its flags
are Hydra's and not a copy of them. The one place visiontrain reads Hydra's flags; what the entry points make of a
command line before Hydra runs it is ``visiontrain.cli.train.command_line``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visiontrain import compat

# flags after which Hydra prints or completes and runs nothing (every DDP process may do that on its own)
SHOWS_ONLY = ("help", "hydra_help", "cfg", "info", "shell_completion")
# flags after which the arguments are not overrides of our config: Hydra handles those commands alone
NOT_OUR_CONFIG = ("config_path", "experimental_rerun", "shell_completion")


@dataclass(frozen=True)
class HydraCommandLine:
    overrides: list[str]
    flags: dict[str, Any]  # the flags given, by Hydra's name for them (multirun, config_name, config_dir, cfg, ...)

    @property
    def multirun(self) -> bool:
        return bool(self.flags.get("multirun"))

    @property
    def runs_the_task(self) -> bool:
        return not any(self.flags.get(name) for name in SHOWS_ONLY)

    @property
    def composes_our_config(self) -> bool:
        return not any(self.flags.get(name) for name in NOT_OUR_CONFIG)


def read(args: list[str]) -> HydraCommandLine:
    """``args`` (after the script) as ``hydra.main`` reads them; a flag Hydra does not know ends the command there
    with Hydra's own usage message, as Hydra would."""
    parsed = vars(compat.hydra_arguments(list(args)))
    overrides = parsed.pop("overrides")
    return HydraCommandLine(overrides, {name: value for name, value in parsed.items() if value not in (None, False)})
