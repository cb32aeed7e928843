"""Every private internal of Lightning, torch and Hydra that visiontrain reaches into, in one place.

Each is used only where no public API does the job (the reason stands beside it), is applied explicitly by the
code that needs it (never when this module is imported), and has a probe in :data:`PROBES` that
``tests/test_compat.py`` runs: when a release moves an internal, that test fails with a sentence naming the
package version and what moved, instead of a run failing (or silently slowing) somewhere else. The versions
tested are stated in pyproject.toml beside the dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, TypeVar


class Moved(AssertionError):
    """An internal visiontrain relies on is not where it was; the message names the package version."""


def moved(package: str, what: str) -> Moved:
    return Moved(f"{package} {version(package)}: {what}; visiontrain.compat needs updating for this release.")


# --- Lightning: per-batch hooks a callback leaves empty are not called ---------------------------------------
# For every hook Lightning walks all callbacks and, for each, enters its profiler's context, formats the
# callback's state_key and calls the method, even the empty one a callback inherits; six hooks a training step
# for each of a run's ~15 callbacks. It skips an attribute that is not callable (trainer/call.py,
# _call_callback_hooks), which no public API offers: so a class's inherited empty hooks are set to None.
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)

C = TypeVar("C", bound=type)


def batch_hooks_only_where_used(cls: C) -> C:
    """Class decorator: the per-batch hooks ``cls`` inherits empty from ``Callback`` become None (not called)."""
    from lightning import Callback

    for name in PER_BATCH_HOOKS:
        if getattr(cls, name, None) is getattr(Callback, name):
            setattr(cls, name, None)
    return cls


def probe_hooks_left_out() -> None:
    import inspect

    from lightning.pytorch.trainer import call

    source = inspect.getsource(call._call_callback_hooks)
    if "callable(fn)" not in source:
        raise moved("lightning", "trainer.call._call_callback_hooks no longer skips hooks that are not callable")


# --- Lightning: the attribute a LightningModule names its running hook in ------------------------------------
# Set ~45 times a training step; visiontrain.tasks.base sets it as a plain attribute (nn.Module.__setattr__'s
# checks cost several times more). Were it renamed, the shortcut would only stop applying.
HOOK_NAME_ATTRIBUTE = "_current_fx_name"


def probe_hook_name_attribute() -> None:
    from lightning import LightningModule

    if not hasattr(LightningModule(), HOOK_NAME_ATTRIBUTE):
        raise moved("lightning", f"LightningModule has no {HOOK_NAME_ATTRIBUTE} attribute")


# --- Lightning: the launcher that starts DDP processes by running the command line again -------------------
# visiontrain.runs.ddp must know a trainer will start its processes that way (a multirun job then hands its
# folder to them); Lightning exposes the launcher object but not a public name for its kind.
def subprocess_script_launcher() -> type:
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    return _SubprocessScriptLauncher


def probe_subprocess_script_launcher() -> None:
    try:
        launcher = subprocess_script_launcher()
    except ImportError:
        raise moved("lightning", "strategies.launchers has no _SubprocessScriptLauncher") from None
    if not launcher.is_interactive_compatible.fget or not hasattr(launcher, "launch"):
        raise moved("lightning", "_SubprocessScriptLauncher lost its launch interface")


# --- Lightning: EMAWeightAveraging's averaged copy ------------------------------------------------------------
# visiontrain.callbacks.ema subclasses Lightning's EMAWeightAveraging to make its fixed choices configurable
# (validate on the EMA or not, which weights a checkpoint holds); the averaged copy and the swap are protected.
def average_model(callback: Any) -> Any:
    """The ``torch.optim.swa_utils.AveragedModel`` of a WeightAveraging callback (None before setup)."""
    return callback._average_model


def averaging_device(callback: Any) -> Any:
    return callback._device


def swap_models(callback: Any, pl_module: Any) -> None:
    callback._swap_models(pl_module)


def copy_average_to_current(callback: Any, pl_module: Any) -> None:
    callback._copy_average_to_current(pl_module)


def probe_weight_averaging() -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    callback = EMAWeightAveraging()
    for name in ("_average_model", "_device"):
        if not hasattr(callback, name):
            raise moved("lightning", f"EMAWeightAveraging has no {name} attribute")
    for name in ("_swap_models", "_copy_average_to_current"):
        if not callable(getattr(callback, name, None)):
            raise moved("lightning", f"EMAWeightAveraging has no {name} method")


# --- torch: whether nn.Module.compile() has already compiled a module ---------------------------------------------
# Module.compile() compiles in place (parameter names, and so checkpoints, unchanged) and keeps the compiled call
# in an attribute that no public API reads; a second setup (fit, then test) must not compile again.
def is_compiled(module: Any) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def probe_compiled_module() -> None:
    import torch

    module = torch.nn.Linear(1, 1)
    if is_compiled(module):
        raise moved("torch", "nn.Module holds a compiled call before compile()")
    module.compile()
    if not is_compiled(module):
        raise moved("torch", "nn.Module.compile() no longer keeps its compiled call in _compiled_call_impl")


# --- TensorBoard (torch.utils.tensorboard): the writer of a SummaryWriter's event file -------------------------
# A resumed run writes a session-start marker at its step (visiontrain.callbacks.tensorboard), as
# SummaryWriter(purge_step=...) would, into the logger's own writer once the checkpoint's step is known.
def event_file_writer(summary_writer: Any) -> Any:
    return summary_writer._get_file_writer()


def probe_event_file_writer() -> None:
    from torch.utils.tensorboard import SummaryWriter

    if not callable(getattr(SummaryWriter, "_get_file_writer", None)):
        raise moved("torch", "torch.utils.tensorboard.SummaryWriter has no _get_file_writer method")


# --- torch: the env:// rendezvous store ----------------------------------------------------------------------
# torch's TCPStore server listens on every interface whatever address the processes meet at; rank zero's store
# is handed a socket bound to the loopback address instead (visiontrain.runs.ddp.store_on_loopback). torch
# creates it in a module function that no option reaches.
RENDEZVOUS_MODULE = "torch.distributed.rendezvous"


def serve_rendezvous_store_on_loopback(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap torch's store creation with ``wrap`` (once per process; again is a no-op)."""
    module = importlib.import_module(RENDEZVOUS_MODULE)  # a module, and also the name of a function
    if not getattr(module._create_c10d_store, "visiontrain_loopback", False):
        module._create_c10d_store = wrap(module._create_c10d_store)


def probe_rendezvous_store() -> None:
    import inspect

    module = importlib.import_module(RENDEZVOUS_MODULE)
    create = getattr(module, "_create_c10d_store", None)
    if create is None:
        raise moved("torch", f"{RENDEZVOUS_MODULE} has no _create_c10d_store")
    names = list(inspect.signature(getattr(create, "__wrapped__", create)).parameters)
    if names[:5] != ["hostname", "port", "rank", "world_size", "timeout"]:
        raise moved("torch", f"{RENDEZVOUS_MODULE}._create_c10d_store takes {names}")


# --- Lightning: the Trainer's argument names, without importing Lightning -----------------------------------------
# A mistyped trainer.* key is answered before torch and Lightning load (~5 s): the names are read from the source
# file of Lightning's Trainer (its __init__'s parameters), falling back to importing it where that file is not found.
def trainer_arguments() -> set[str]:
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("lightning")  # finds the package without importing it
    source = Path(spec.origin).parent / "pytorch" / "trainer" / "trainer.py" if spec and spec.origin else None
    if source is not None and source.is_file():
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name == "Trainer":
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        names = [a.arg for a in (*item.args.args, *item.args.kwonlyargs)]
                        return set(names) - {"self"}
    return imported_trainer_arguments()


def imported_trainer_arguments() -> set[str]:
    """The same names from the imported Trainer's signature."""
    import inspect

    from lightning.pytorch import Trainer

    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def probe_trainer_arguments() -> None:
    if trainer_arguments() != imported_trainer_arguments():
        raise moved("lightning", "the Trainer's arguments read from its source differ from its signature")


# --- Lightning: the global rank a process starts with -------------------------------------------------------------
# What Lightning's rank_zero_only.rank is set from at import (the first of these variables set, else 0), read here
# so that the command line is handled before Lightning loads.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank_at_start() -> int:
    import os

    return next((int(os.environ[key]) for key in RANK_VARIABLES if os.environ.get(key) is not None), 0)


def probe_global_rank() -> None:
    import os

    from lightning.fabric.utilities import rank_zero

    saved = {key: os.environ.pop(key, None) for key in RANK_VARIABLES}
    try:
        for settings in ({}, {"SLURM_PROCID": "3"}, {"LOCAL_RANK": "1", "SLURM_PROCID": "3"}, {"RANK": "2"}):
            os.environ.update(settings)
            if (rank_zero._get_rank() or 0) != global_rank_at_start():
                raise moved("lightning", f"the global rank is no longer read from {', '.join(RANK_VARIABLES)}")
            for key in settings:
                del os.environ[key]
    finally:
        os.environ.update({key: value for key, value in saved.items() if value is not None})


# --- Hydra: its command-line parser and the basic launcher's name ------------------------------------------------
# The command line is checked before Hydra runs (visiontrain.cli.command_line); it is read with Hydra's own
# parser so that its flags are Hydra's, not a copy of them.
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def hydra_arguments(args: list[str]) -> Any:
    """``args`` read as ``hydra.main`` reads them: ``.overrides`` and one attribute per flag."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(args)


def probe_hydra() -> None:
    try:
        parsed = hydra_arguments(["-m", "--config-name", "x", "a=1"])
    except (ImportError, SystemExit):
        raise moved("hydra-core", "hydra._internal.utils.get_args_parser is gone or reads flags otherwise") from None
    if parsed.overrides != ["a=1"] or not parsed.multirun or parsed.config_name != "x":
        raise moved("hydra-core", "get_args_parser no longer gives overrides, multirun and config_name")
    module, _, name = BASIC_LAUNCHER.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise moved("hydra-core", f"the basic launcher is no longer {BASIC_LAUNCHER}") from None


PROBES: dict[str, Callable[[], None]] = {
    "callback hooks left out": probe_hooks_left_out,
    "hook name attribute": probe_hook_name_attribute,
    "subprocess script launcher": probe_subprocess_script_launcher,
    "EMA weight averaging": probe_weight_averaging,
    "compiled module": probe_compiled_module,
    "TensorBoard event file writer": probe_event_file_writer,
    "rendezvous store": probe_rendezvous_store,
    "Trainer arguments from source": probe_trainer_arguments,
    "global rank at start": probe_global_rank,
    "Hydra command line": probe_hydra,
}
