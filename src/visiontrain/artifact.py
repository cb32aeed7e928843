"""The trained artifact: what a visiontrain checkpoint holds beyond Lightning's state, and what an exported
ONNX or TorchScript file carries. The only module that knows either layout: everything that writes or
reads one (the checkpoint callback, the tasks, eval, predict, export, resume and the weight loader) goes
through the functions here.

Format 1, in a checkpoint (plain values, so the file loads with ``weights_only=True``):

- ``visiontrain_format``: 1 (checkpoints written before this key existed are format 1 too);
- ``visiontrain_config``: ``model`` and ``data`` as composed (interpolations kept: ``eval.py`` rebuilds them),
  ``model_resolved`` (every value filled in: ``predict.py`` and ``export.py`` rebuild the network from it),
  ``preprocessing`` (the data's test-time input pipeline, ``visiontrain.data.preprocessing``), ``task``;
- ``class_names``; ``category_ids`` for detection (the dataset's id of each label ``1..K``);
- ``visiontrain_splits`` (absent from checkpoints written before it existed): what the training run's splits held,
  per split ``count``, ``digest``, ``labels_digest`` and ``hashes`` (``visiontrain.data.manifest.summary``).

In an exported file: one JSON object under the ONNX metadata key / TorchScript extra file ``visiontrain``
with ``format_version``, ``task``, ``class_names``, ``preprocessing``, ``category_ids`` (detection),
``temperature`` (calibrate=temperature: the graph's logits are already divided by it) and whatever the exporter
adds (``exporter``, ``opset``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from visiontrain.errors import UserError

log = logging.getLogger("visiontrain")

FORMAT_VERSION = 1
VERSION_KEY = "visiontrain_format"
CONFIG_KEY = "visiontrain_config"
SPLITS_KEY = "visiontrain_splits"
METADATA_KEY = "visiontrain"  # the ONNX metadata key; the TorchScript extra file is METADATA_KEY + ".json"
# modules that moved since checkpoints named them in their configs' _target_: old prefix -> new prefix
MOVED_TARGETS = {
    "visiontrain.optim.": "visiontrain.tasks.schedules.",
    # dataset modules named by source and kind (6c110cd and before: pennfudan.py, oxford_pet.py)
    "visiontrain.data.pennfudan.": "visiontrain.data.pennfudan_detection.",
    "visiontrain.data.oxford_pet.": "visiontrain.data.oxford_pet_seg.",
}


@dataclass(frozen=True)
class ArtifactInfo:
    """What a trained model is, wherever it is stored: enough to feed it images and name its outputs."""

    task: str
    class_names: tuple[str, ...]
    preprocessing: dict[str, Any]
    category_ids: tuple[int, ...] | None = None  # detection: the dataset's id of label 1..K
    # checkpoints only: "model" and "data" as composed, "model_resolved" with every value filled in
    configs: Mapping[str, Any] = field(default_factory=dict)
    # checkpoints only: the training run's splits (visiontrain.data.manifest.summary); {} when not recorded
    splits: Mapping[str, Any] = field(default_factory=dict)
    # calibrate=temperature: what the logits are divided by (a checkpoint keeps it in its weights; an exported file
    # applies it in its graph and names it in its metadata)
    temperature: float | None = None

    def metadata(self) -> dict[str, Any]:
        """What an exported file carries (the configs stay in the checkpoint)."""
        info = {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing,
        }
        if self.category_ids is not None:
            info["category_ids"] = list(self.category_ids)
        if self.temperature is not None:
            info["temperature"] = self.temperature
        return info


# --- checkpoints ----------------------------------------------------------------------------------
def write(checkpoint: dict[str, Any], info: ArtifactInfo) -> None:
    """Put ``info`` into a checkpoint Lightning is about to save."""
    checkpoint[VERSION_KEY] = FORMAT_VERSION
    checkpoint[CONFIG_KEY] = {**info.configs, "preprocessing": info.preprocessing, "task": info.task}
    checkpoint["class_names"] = list(info.class_names)
    if info.category_ids is not None:
        checkpoint["category_ids"] = list(info.category_ids)
    if info.splits:
        checkpoint[SPLITS_KEY] = dict(info.splits)


def describe(checkpoint: Mapping[str, Any], source: str) -> ArtifactInfo | None:
    """The artifact a loaded checkpoint holds; None for a checkpoint visiontrain's training did not write (a
    plain state dict, another program's Lightning checkpoint). Configs name today's modules (MOVED_TARGETS)."""
    if VERSION_KEY not in checkpoint and CONFIG_KEY not in checkpoint:
        return None
    check_version(checkpoint.get(VERSION_KEY, 1), source)
    stored = dict(checkpoint.get(CONFIG_KEY) or {})
    task = str(stored.pop("task", "") or "")
    preprocessing = stored.pop("preprocessing", None) or {}
    configs = {key: current_targets(value) for key, value in stored.items()}
    for key, value in configs.items():
        check_targets(value, f"{source}'s {key} config", key)
    names = checkpoint.get("class_names")
    if names is None:  # only ever missing from hand-made files: the model's own numbering
        names = [str(i) for i in range(int((configs.get("model_resolved") or {}).get("num_classes", 0)))]
    category_ids = checkpoint.get("category_ids")
    return ArtifactInfo(
        task=task,
        class_names=tuple(str(n) for n in names),
        preprocessing=dict(preprocessing),
        category_ids=tuple(int(i) for i in category_ids) if category_ids is not None else None,
        configs=configs,
        splits=dict(checkpoint.get(SPLITS_KEY) or {}),
    )


def check_version(version: Any, source: str) -> None:
    if version != FORMAT_VERSION:
        raise UserError(
            f"{source} is a visiontrain artifact of format {version}, and this visiontrain reads format "
            f"{FORMAT_VERSION}; use the visiontrain version that wrote it, or train (or export) it again."
        )


def current_targets(config: Any) -> Any:
    """A plain config with every ``_target_`` under a module that moved renamed to where it is now."""
    if isinstance(config, Mapping):
        out = {key: current_targets(value) for key, value in config.items()}
        target = out.get("_target_")
        for old, new in MOVED_TARGETS.items():
            if isinstance(target, str) and target.startswith(old):
                out["_target_"] = new + target[len(old) :]
        return out
    if isinstance(config, list):
        return [current_targets(value) for value in config]
    return config


# --- what a stored config may build --------------------------------------------------------------
# A config read from a file (a checkpoint's model and data configs) is instantiated by eval, predict and export:
# what it may name is allowed here and nowhere else. A `_target_` must lie under one of these module prefixes
# AND be one of the kinds below, checked before anything is built; positional `_args_` are never written by our
# configs and are refused. Users who train their own model or data code name its modules in TRUST_ENV.
TARGET_PREFIXES = ("visiontrain.models.", "visiontrain.tasks.", "visiontrain.data.", "torch.optim.")
TRUST_ENV = "VISIONTRAIN_TRUSTED_TARGETS"  # comma-separated module prefixes, e.g. "my_models.,my_datamodules."
# resolvers a stored config may call: ones that only read values (oc.create / oc.decode would turn a string into a
# config holding a `_target_` after the check)
SAFE_RESOLVERS = frozenset({"oc.select", "oc.env", "now"})
RESOLVER_CALL = re.compile(r"\$\{\s*([\w.]+)\s*:")


def _buildable_kinds() -> tuple[type, ...]:
    import torch
    from lightning import LightningDataModule, LightningModule

    return (
        torch.nn.Module,
        LightningModule,
        LightningDataModule,
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
    )


def _allowed_builder(target: str, obj: Any) -> bool:
    """Our own builders: a model family's ``build_*`` function, or a learning-rate schedule of ours."""
    if not inspect.isfunction(obj) or not obj.__module__.startswith("visiontrain."):
        return False
    return (target.startswith("visiontrain.models.") and obj.__name__.startswith("build_")) or target.startswith(
        "visiontrain.tasks.schedules."
    )


def check_targets(config: Any, source: str, key: str) -> None:
    """Refuse, in one sentence naming the key, a stored config that would build anything but our model, data,
    optimizer and schedule objects (TARGET_PREFIXES, the kinds in ``_buildable_kinds``, ``_allowed_builder``)."""
    if isinstance(config, list):
        for i, value in enumerate(config):
            check_targets(value, source, f"{key}[{i}]")
        return
    if isinstance(config, str):
        for resolver in RESOLVER_CALL.findall(config):
            if resolver not in SAFE_RESOLVERS:
                raise UserError(
                    f"{source} was refused: {key} calls the resolver {resolver!r}, "
                    "which visiontrain does not write into a checkpoint."
                )
        return
    if not isinstance(config, Mapping):
        return
    if "_args_" in config:
        raise UserError(f"{source} was refused: {key}._args_ is not something visiontrain writes into a checkpoint.")
    target = config.get("_target_")
    if target is not None:
        _check_target(target, source, f"{key}._target_" if key else "_target_")
    for name, value in config.items():
        if name != "_target_":
            check_targets(value, source, f"{key}.{name}" if key else str(name))


def _check_target(target: Any, source: str, key: str) -> None:
    trusted = tuple(p.strip() for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip())
    refused = f"{source} was refused: {key}={target!r} is not a model, data, optimizer or schedule class visiontrain"
    if not isinstance(target, str) or not target.startswith(TARGET_PREFIXES + trusted):
        raise UserError(
            f"{refused} builds (a file from elsewhere may carry code; your own modules can be trusted with "
            f"{TRUST_ENV}=<module prefix>)."
        )
    if target.startswith(trusted):
        return
    module_name, _, attribute = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        raise UserError(f"{source} names {key}={target!r}, which this visiontrain does not have.") from None
    if not (inspect.isclass(obj) and issubclass(obj, _buildable_kinds())) and not _allowed_builder(target, obj):
        raise UserError(f"{refused} builds.")


def unloadable_reason(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in our words: never torch's advice to load it with
    ``weights_only=False``, which would run whatever code the file carries."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "weights only" in text.lower():
        return "it holds objects other than tensors and plain values, so it is not a file this tool can load safely"
    if isinstance(err, (EOFError, zipfile.BadZipFile)) or "zip archive" in text or "central directory" in text:
        return "it is truncated or not a checkpoint at all (not the complete archive torch.save writes)"
    if "mmap" in text or isinstance(err, pickle.UnpicklingError):
        return "it is not a checkpoint this tool can load safely (not an archive written by torch.save)"
    return f"it cannot be read as a checkpoint ({type(err).__name__})"


class Unreadable(UserError):
    """``torch.load(weights_only=True)`` refused the file; ``reason`` says why (``unloadable_reason``)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} was not loaded, as {reason}.")
        self.reason = reason


def read_file(path: str | Path, mmap: bool = True) -> Any:
    """A file written by ``torch.save``, read safely: ``weights_only=True`` (no code in it runs) and, with
    ``mmap``, tensors memory-mapped (reading a checkpoint only to check it costs little)."""
    try:
        import torch  # here: a command checks its command line before torch loads

        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types here; the reason is what the user needs
        raise Unreadable(Path(path), unloadable_reason(err)) from None


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    content: dict[str, Any]  # the whole file: Lightning's state and ours
    info: ArtifactInfo | None  # None: not written by visiontrain's training (see ``describe``)


def checkpoint_file(path: str | Path, option: str = "ckpt_path") -> Path:
    """``path`` itself, or for a run folder its best checkpoint (the one its metrics.json names, else its only one
    besides last.ckpt), said in one line; a folder where neither tells is one sentence listing its checkpoints."""
    path = Path(path)
    if not path.is_dir():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted(folder.glob("*.ckpt"))
    if not found:
        raise UserError(f"{option}={path} is a folder without checkpoints (*.ckpt); give a checkpoint file.")
    best = None
    metrics = path / "metrics.json"
    with contextlib.suppress(OSError, ValueError):  # an unreadable metrics.json tells nothing
        named = json.loads(metrics.read_text()).get("best_model_path") if metrics.is_file() else None
        if named and (folder / Path(named).name).is_file():  # by name: run folders move
            best = folder / Path(named).name
    epochs = [f for f in found if f.name != "last.ckpt"]
    best = best or (epochs[0] if len(epochs) == 1 else None)
    if best is None:
        names = ", ".join(f.name for f in found)
        raise UserError(f"{option}={path} is a run folder with several checkpoints; give one of them: {names}.")
    log.info("%s=%s is a run folder: using its best checkpoint, %s", option, path, best.name)
    return best


def load_checkpoint(path: str | Path, option: str = "checkpoint", training_run: bool = True) -> Checkpoint:
    """Load a checkpoint: the one way eval, predict, export, resume and ``ckpt_path`` read one. Safe
    (``read_file``); a UserError naming ``option`` (``ckpt_path=...``, ``resume=...``) says what is wrong
    with the file. ``training_run``: it must hold a ``state_dict`` (callers that check more pass False)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option}: {path} does not exist.")
    if path.stat().st_size == 0:
        raise UserError(f"{option}: {path} is empty (a checkpoint whose writing was cut short?).")
    try:
        content = read_file(path)
    except Unreadable as err:
        raise UserError(f"{option}: {err}") from None
    if not isinstance(content, Mapping) or (training_run and "state_dict" not in content):
        raise UserError(f"{option}: {path} is not a checkpoint of a training run (it has no state_dict).")
    return Checkpoint(path, dict(content), describe(content, str(path)))


# --- exported files -------------------------------------------------------------------------------
def add_to_onnx(proto: Any, info: ArtifactInfo, **extra: Any) -> None:
    """Write ``info`` (and e.g. ``exporter``, ``opset``) into an ONNX model's metadata before it is saved."""
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**info.metadata(), **extra})


def torchscript_files(info: ArtifactInfo) -> dict[str, str]:
    """``_extra_files`` for ``torch.jit.save``."""
    return {f"{METADATA_KEY}.json": json.dumps(info.metadata())}


def from_onnx(metadata: Mapping[str, str], source: str) -> ArtifactInfo:
    """The artifact an ONNX file describes, from its metadata (``session.get_modelmeta().custom_metadata_map``)."""
    return from_metadata(metadata.get(METADATA_KEY), source)


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, ArtifactInfo]:
    """A TorchScript file and the artifact it describes."""
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        import torch

        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        raise UserError(f"{path} is not a TorchScript file ({type(err).__name__}).") from err
    return scripted, from_metadata(extra[f"{METADATA_KEY}.json"] or None, str(path))


def from_metadata(text: str | None, source: str) -> ArtifactInfo:
    if not text:
        raise UserError(f"{source} carries no visiontrain metadata; export it with export.py.")
    info = json.loads(text)
    check_version(info.get("format_version", 1), source)
    category_ids = tuple(info["category_ids"]) if info.get("category_ids") is not None else None
    temperature = float(info["temperature"]) if info.get("temperature") is not None else None
    return ArtifactInfo(
        info["task"], tuple(info["class_names"]), info["preprocessing"], category_ids, temperature=temperature
    )
