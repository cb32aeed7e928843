"""Mistyped overrides refused in one sentence, with a "did you mean", before Hydra creates anything.

Hydra's own answer to ``trainer.max_epoch=1`` is to suggest ``+trainer.max_epoch=1``, which then fails inside the
Trainer with a TypeError after the run folder exists; to ``model=resnt`` it lists the options without the near one.
Here a config key is checked against the config composed with the command line's group choices, a group option
against the YAML files of its folder in conf/, and a key under ``trainer`` against ``lightning.pytorch.Trainer``'s
arguments. Anything this module cannot judge (Hydra's own groups and ``hydra.*`` keys, malformed overrides, configs
that do not compose) is left to Hydra.
"""

from __future__ import annotations

import difflib
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from visiontrain import compat
from visiontrain.errors import UserError
from visiontrain.runs import command_line
from visiontrain.runs.config import CONFIG_DIR

TRAINER = "lightning.pytorch.Trainer"
TRAINER_TARGETS = {TRAINER, "lightning.Trainer", "lightning.pytorch.trainer.trainer.Trainer"}
# group sweeps (model=resnet,unet) compose once per combination, up to this many, before a key counts as unknown
MAX_COMPOSITIONS = 8


def check_overrides(config_name: str, args: list[str]) -> None:
    """Raise a UserError (one sentence) for the first mistyped key, group option or Trainer argument in ``args``
    (the command-line arguments after the script, as Hydra will read them), or for SLURM resources that disagree
    with the Trainer's."""
    typed = command_line.read(args)
    overrides = typed.overrides
    if not overrides or not typed.composes_our_config:
        return
    config_name = typed.flags.get("config_name") or config_name
    extra_dirs = [typed.flags["config_dir"]] if typed.flags.get("config_dir") else []
    config_dirs = [Path(CONFIG_DIR), *(Path(d).resolve() for d in extra_dirs)]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # malformed: Hydra says where
        return
    if any(o.key_or_group == "hydra.searchpath" for o in parsed):
        return  # configs from elsewhere: only Hydra knows what they hold
    ours = [o for o in parsed if o.key_or_group != "hydra" and not o.is_hydra_override()]
    choices, keys = [], []
    for override in ours:
        (choices if is_group(override.key_or_group, config_dirs) else keys).append(override)
    for override in choices:
        check_options(override, config_dirs)
    for override in keys:
        check_group_name(override, config_dirs)
    if ours:
        check_keys(config_name, config_dirs, choices, keys)
    check_slurm_resources(config_name, config_dirs, parsed)


def is_base(path: str) -> bool:
    """A folder or file whose name starts with ``_`` (``model/_base/detector``): built on, never chosen."""
    return any(part.startswith("_") for part in path.split("/"))


def is_group(name: str, config_dirs: list[Path]) -> bool:
    return not is_base(name) and any((d / name).is_dir() for d in config_dirs)


def group_options(group: str, config_dirs: list[Path]) -> list[str]:
    return sorted({p.stem for d in config_dirs for p in (d / group).glob("*.y*ml") if p.suffix in (".yaml", ".yml")})


def is_option(group: str, option: str, config_dirs: list[Path]) -> bool:
    # an option may sit in a subfolder of the group (group=sub/option), but not in _base/
    if is_base(option):
        return False
    return any((d / group / f"{option}{suffix}").is_file() for d in config_dirs for suffix in (".yaml", ".yml"))


def chosen_options(override: Override, config_dirs: list[Path]) -> list[str]:
    """The options a group override names: one, a list (``callbacks=[default,ema]``) or a choice sweep; a glob
    sweep, the options it matches; null (no choice) and range sweeps name none."""
    value = override.value()
    if isinstance(value, Glob):
        return value.filter(group_options(override.key_or_group, config_dirs))
    if isinstance(value, ChoiceSweep):
        value = [getattr(v, "text", v) for v in value.list]  # a QuotedString holds its text
    elif value is None or override.is_sweep_override():
        return []
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v is not None and not isinstance(v, (list, dict))]


def check_options(override: Override, config_dirs: list[Path]) -> None:
    group = override.key_or_group
    options = group_options(group, config_dirs)
    for option in chosen_options(override, config_dirs):
        if is_option(group, option, config_dirs):
            continue
        typed = f"{override.get_key_element()}={option}"
        near = difflib.get_close_matches(option, options, n=1)
        hint = f"; did you mean {override.get_key_element()}={near[0]}?" if near else ""
        raise UserError(f"{typed} is not an option of {group}{hint} (options: {', '.join(options)})")


def group_names(config_dirs: list[Path]) -> list[str]:
    """Every group folder (model, model/optimizer, ...) but Hydra's own."""
    names = {p.relative_to(d).as_posix() for d in config_dirs for p in d.rglob("*") if p.is_dir()}
    return sorted(n for n in names if n.split("/")[0] != "hydra" and not is_base(n))


def check_group_name(override: Override, config_dirs: list[Path]) -> None:
    """``model/optimzer=adamw``: a group path that is no folder in conf/ (Hydra would take it for a key)."""
    name = override.key_or_group
    if "/" not in name:
        return
    if is_base(name):
        raise UserError(f"{name} holds configs that other configs build on, not options to choose")
    groups = group_names(config_dirs)
    near = difflib.get_close_matches(name, groups, n=1)
    hint = f"; did you mean {override.input_line.replace(name, near[0], 1)}?" if near else ""
    raise UserError(f"{name} is not a config group{hint} (groups: {', '.join(groups)})")


def check_keys(config_name: str, config_dirs: list[Path], choices: list[Override], keys: list[Override]) -> None:
    """Each key override against the config composed with the command line's group choices. With swept groups
    (``-m model=resnet,unet``) a key counts as unknown only if every combination (up to MAX_COMPOSITIONS) lacks it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = ",".join(f"'file://{d}'" for d in config_dirs[1:])  # --config-dir: Hydra adds it to the search path
    search_path = [f"hydra.searchpath=[{extra}]"] if extra else []
    lines = []
    for override in choices:
        if override.is_sweep_override():
            options = chosen_options(override, config_dirs)
            lines.append([f"{override.get_key_element()}={option}" for option in options] or [None])
        else:
            lines.append([override.input_line])
    failing: dict[str, str] | None = None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            for combination in itertools.islice(itertools.product(*lines), MAX_COMPOSITIONS):
                try:
                    cfg = compose(config_name=config_name, overrides=[*search_path, *filter(None, combination)])
                except Exception:  # whatever stops composition, Hydra reports when it runs
                    continue
                found = problems(cfg, keys, config_dirs)
                failing = found if failing is None else {k: v for k, v in failing.items() if k in found}
                if not failing:
                    return
    finally:
        GlobalHydra.instance().clear()
    if failing:
        raise UserError(next(iter(failing.values())))


def problems(cfg: DictConfig, keys: list[Override], config_dirs: list[Path]) -> dict[str, str]:
    """What is wrong with the key overrides and the Trainer's config in ``cfg``: {override or key: one sentence}."""
    found: dict[str, str] = {}
    added = [o.key_or_group for o in keys if o.is_add() or o.is_force_add()]
    deleted = {o.key_or_group for o in keys if o.is_delete()}
    arguments = trainer_arguments(cfg)
    for override in keys:
        parts = override.key_or_group.split(".")
        if override.is_add() or override.is_force_add():
            # adding keys is what + is for; under trainer the Trainer's signature decides
            if parts[0] == "trainer" and len(parts) > 1 and arguments is not None and parts[1] not in arguments:
                found[override.input_line] = not_a_trainer_argument(parts[1], arguments)
            continue
        key = override.key_or_group
        # a key added with + earlier, a key inside it, or the node that holds it (callbacks.kill=null after
        # +callbacks.kill._target_=...)
        if any(key == a or key.startswith(f"{a}.") or a.startswith(f"{key}.") for a in added):
            continue
        missing = missing_part(cfg, parts)
        if missing is not None:
            found[override.input_line] = unknown_key(cfg, override, missing, arguments, config_dirs)
    trainer = cfg.get("trainer") if arguments is not None else None
    for name in trainer.keys() if isinstance(trainer, DictConfig) else []:
        if name != "_target_" and name not in arguments and f"trainer.{name}" not in deleted:
            found[f"trainer.{name}"] = not_a_trainer_argument(str(name), arguments, " (set in the config)")
    return found


def unknown_key(
    cfg: DictConfig, override: Override, missing: int, arguments: set[str] | None, config_dirs: list[Path]
) -> str:
    """The sentence for a key override whose key ``cfg`` lacks from its part number ``missing`` on."""
    key = override.key_or_group
    parts = key.split(".")
    if parts[0] == "trainer" and len(parts) == 2 and parts[1] in RENAMED_TRAINER_ARGUMENTS:
        return not_a_trainer_argument(parts[1], arguments or set())
    if parts[0] == "trainer" and len(parts) == 2 and arguments is not None:
        if parts[1] in arguments:
            if override.is_delete():
                return f"{key} is not set in the config, so there is nothing to delete"
            return f"{key} is not set in the config yet; add it with +{override.input_line}"
        near = difflib.get_close_matches(parts[1], sorted(arguments), n=1)
        if not near:
            return f"{key} is not a config key, nor an argument of {TRAINER}"
        if near[0] in cfg.trainer or override.is_delete():
            return f"{key} is not a config key; did you mean trainer.{near[0]}?"
        return f"{key} is not a config key; did you mean +trainer.{near[0]}={override.get_value_string()}?"
    near = suggestions(cfg, parts, missing)
    if len(parts) == 1 and near and is_group(near[0], config_dirs) and override.value_type is not None:
        return f"{key} is not a config key or group; did you mean {override.input_line.replace(key, near[0], 1)}?"
    if near and override.is_delete():
        return f"{key} is not a config key; did you mean {' or '.join(near)}?"
    if near:  # or a new key indeed (+model.net.encoder_depth=3 next to encoder_name)
        return f"{key} is not a config key; did you mean {' or '.join(near)}? (+{override.input_line} adds it as new)"
    if override.is_delete():
        return f"{key} is not a config key, so there is nothing to delete"
    return f"{key} is not a config key (+{override.input_line} adds it as a new one)"


def check_slurm_resources(config_name: str, config_dirs: list[Path], parsed: list[Override]) -> None:
    """``hydra/launcher=slurm``: srun starts one training process per task, and Lightning's SLURM environment takes
    the job's nodes and tasks per node for the Trainer's ``num_nodes`` and ``devices`` (refusing the job on the
    cluster, once it has waited in the queue, when they differ); on GPUs each of those processes needs a GPU of its
    own. conf/hydra/launcher/slurm.yaml follows the Trainer; a launcher value typed against it is refused here."""
    if not any(o.key_or_group == "hydra/launcher" or o.key_or_group.startswith("hydra.launcher.") for o in parsed):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = ",".join(f"'file://{d}'" for d in config_dirs[1:])
    search_path = [f"hydra.searchpath=[{extra}]"] if extra else []
    # a sweep's values are composed one job at a time by Hydra; the resources are the same for every job
    overrides = [*search_path, *(o.input_line for o in parsed if not o.is_sweep_override())]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except Exception:  # whatever stops composition, Hydra reports when it runs
        return
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    if not str(launcher.get("_target_", "")).endswith(".SlurmLauncher") or trainer_arguments(cfg) is None:
        return
    num_nodes = cfg.trainer.get("num_nodes", 1)
    devices = cfg.trainer.get("devices")
    count = len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else devices
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise UserError(
            f"trainer.devices={devices}: on SLURM give the number of devices per node, which "
            "hydra.launcher.tasks_per_node follows (srun starts one training process per task)."
        )
    # the launcher's values, read only now: its schema types them, and trainer.devices=auto would fail there
    launcher_values = {key: launcher.get(key) for key in ("nodes", "tasks_per_node", "gpus_per_node")}
    per_task = "srun starts one training process per task, Lightning one per device"
    agree = [("nodes", "trainer.num_nodes", num_nodes, "SLURM's nodes are Lightning's")]
    agree.append(("tasks_per_node", "trainer.devices", count, per_task))
    if cfg.trainer.get("accelerator") in ("gpu", "cuda"):
        agree.append(("gpus_per_node", "trainer.devices", count, "each training process needs a GPU of its own"))
    for key, option, value, why in agree:
        if launcher_values[key] != value:
            raise UserError(
                f"hydra.launcher.{key}={launcher_values[key]} disagrees with {option}={value} ({why}): "
                f"set {option}, which the launcher follows."
            )


def trainer_arguments(cfg: DictConfig) -> set[str] | None:
    """The Trainer's arguments, when ``cfg.trainer`` builds a Lightning Trainer (else None: nothing to check)."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig) or trainer.get("_target_") not in TRAINER_TARGETS:
        return None
    return compat.trainer_arguments()


# Trainer arguments Lightning renamed or removed (1.x -> 2.x), and what does their job now
RENAMED_TRAINER_ARGUMENTS = {
    "gpus": "trainer.accelerator=gpu trainer.devices=<n> (or trainer=gpu)",
    "tpu_cores": "trainer.accelerator=tpu trainer.devices=<n>",
    "ipus": "trainer.accelerator=ipu trainer.devices=<n>",
    "num_processes": "trainer.accelerator=cpu trainer.devices=<n> (or trainer=ddp_cpu)",
    "auto_select_gpus": "trainer.devices=-1 (every visible GPU)",
    "resume_from_checkpoint": "ckpt_path=<file.ckpt> (or resume=<run dir> to continue a run in place)",
    "checkpoint_callback": "trainer.enable_checkpointing",
    "weights_summary": "trainer.enable_model_summary",
    "progress_bar_refresh_rate": "callbacks.progress_bar.refresh_rate",
    "terminate_on_nan": "callbacks.finite_loss (on by default)",
    "amp_backend": "trainer.precision=16-mixed | bf16-mixed",
    "amp_level": "trainer.precision=16-mixed | bf16-mixed",
    "stochastic_weight_avg": "callbacks=ema, or Lightning's StochasticWeightAveraging callback",
    "auto_lr_find": "Lightning's Tuner (lightning.pytorch.tuner.Tuner.lr_find)",
    "auto_scale_batch_size": "Lightning's Tuner (lightning.pytorch.tuner.Tuner.scale_batch_size)",
    "flush_logs_every_n_steps": "the logger's own flush options",
    "log_gpu_memory": "Lightning's DeviceStatsMonitor callback",
    "replace_sampler_ddp": "trainer.use_distributed_sampler",
    "multiple_trainloader_mode": "a CombinedLoader in the datamodule",
}


def not_a_trainer_argument(name: str, arguments: set[str], where: str = "") -> str:
    if name in RENAMED_TRAINER_ARGUMENTS:
        return (
            f"trainer.{name}{where} is no longer an argument of {TRAINER} (Lightning 2 removed it); "
            f"use {RENAMED_TRAINER_ARGUMENTS[name]}"
        )
    near = difflib.get_close_matches(name, sorted(arguments), n=1)
    hint = f"; did you mean trainer.{near[0]}?" if near else ", so the Trainer would refuse it"
    return f"trainer.{name}{where} is not an argument of {TRAINER}{hint}"


def missing_part(cfg: DictConfig, parts: list[str]) -> int | None:
    """The index of the first part of a dotted key that ``cfg`` lacks; None when it has the key, or when the key
    goes under a value, a null, an interpolation or a list (Hydra judges those)."""
    node: Any = cfg
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None
        if part not in node.keys():
            return depth
        if OmegaConf.is_interpolation(node, part) or OmegaConf.is_missing(node, part):
            return None
        node = node[part]
    return None


def all_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for name in node.keys():
        path = f"{prefix}{name}"
        keys.append(path)
        if not OmegaConf.is_interpolation(node, name) and not OmegaConf.is_missing(node, name):
            child = node[name]
            if isinstance(child, DictConfig):
                keys += all_keys(child, f"{path}.")
    return keys


def suggestions(cfg: DictConfig, parts: list[str], missing: int | None) -> list[str]:
    """Keys ``cfg`` has that a mistyped one means: the same path with the nearest names for its missing parts
    (``trainr.max_epoch`` -> ``trainer.max_epochs``), else keys under the same parent ending the same way
    (``model.lr`` -> ``model.optimizer.lr``, ``max_epochs`` -> ``trainer.max_epochs``)."""
    parent = ".".join(parts[:missing])
    fixed = list(parts)
    while missing is not None:
        node = OmegaConf.select(cfg, ".".join(fixed[:missing])) if missing else cfg
        near = difflib.get_close_matches(fixed[missing], [str(k) for k in node.keys()], n=1)
        if not near:
            break
        fixed[missing] = near[0]
        missing = missing_part(cfg, fixed)
    else:
        return [".".join(fixed)]
    ending = "." + ".".join(parts[len(parent.split(".")) if parent else 0 :])
    same_end = [k for k in all_keys(cfg) if k.endswith(ending) and k.startswith(f"{parent}." if parent else "")]
    return sorted(same_end, key=len)[:3]


def checked_main(config_name: str, run: Callable[[], Any]) -> None:
    """An entry point's command: the overrides checked (one ``error:`` sentence, exit 1), then the Hydra app."""
    try:
        check_overrides(config_name, sys.argv[1:])
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    run()
