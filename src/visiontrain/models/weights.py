"""The one way weights get into a network: by name (torchvision's download path) or from a local file
(a plain state dict ``.pt``/``.pth``/``.safetensors``, torchvision's and timm's published files, or a
visiontrain checkpoint of any task or dataset).

Files are read with ``torch.load(weights_only=True)`` or safetensors, never as arbitrary pickles. Keys are
matched by name once wrapper prefixes (``module.``, ``model.``, ``net.``, ``_orig_mod.``) are stripped, under
the source/target sub-prefix alignment that matches the most tensors (so a UNet's ``encoder.layer1...`` lands
in a ResNet classifier's ``layer1...``, and a ResNet file in a detector's ``backbone.body.``). Tensors whose
shape differs (a new head, another number of classes or input channels) stay freshly initialised; the report
says exactly what was loaded, skipped and missing, and ``strict`` refuses any mismatch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visiontrain import artifact
from visiontrain.errors import UserError

log = logging.getLogger("visiontrain")

WRAPPER_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")
# where checkpoints of other libraries keep the state dict
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model_state", "model")
FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt", ".bin")
# config keys that make a builder download or read pretrained weights (see without_pretrained)
PRETRAINED_KEYS = ("weights", "weights_backbone", "encoder_weights", "weights_file")
ALIGN_DEPTH = 3  # sub-prefixes of up to this many dotted components are tried on either side


def is_file(weights: str | None) -> bool:
    """A weights value naming a local file rather than a published name (``IMAGENET1K_V1``, ``imagenet``)."""
    if not weights:
        return False
    text = str(weights)
    return text.endswith(FILE_SUFFIXES) or "/" in text or Path(text).is_file()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by name; a visiontrain/Lightning checkpoint gives its network's tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise UserError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}).") from err
    try:
        content: Any = artifact.read_file(path, mmap=False)
    except artifact.Unreadable as err:
        raise UserError(
            f"{path} is not a state dict that loads safely with weights_only=True: {err.reason}; "
            "save the weights with torch.save(model.state_dict(), ...) or as .safetensors."
        ) from None
    ours = isinstance(content, Mapping) and artifact.describe(content, str(path)) is not None
    lightning = isinstance(content, Mapping) and "pytorch-lightning_version" in content
    while isinstance(content, Mapping) and not _all_tensors(content):
        nested = next((content[k] for k in NESTED_STATE_KEYS if isinstance(content.get(k), Mapping)), None)
        if nested is None:
            break
        content = nested
    if not isinstance(content, Mapping) or not content or not _all_tensors(content):
        raise UserError(f"{path} holds no state dict (a mapping of names to tensors); it cannot initialise a network.")
    state = dict(content)
    if (ours or lightning) and any(k.startswith("net.") for k in state):  # a task checkpoint: its network, not metrics
        state = {k: v for k, v in state.items() if k.startswith("net.")}
    return state


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def strip_wrappers(key: str) -> str:
    """``module.net._orig_mod.layer1.0.conv1.weight`` -> ``layer1.0.conv1.weight``."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _prefixes(key: str) -> list[tuple[str, str]]:
    """``(prefix, rest)`` splits of a dotted key, the whole key first: ``("", k), ("a.", "b.c"), ...``."""
    parts = key.split(".")
    return [
        (".".join(parts[:i]) + ("." if i else ""), ".".join(parts[i:]))
        for i in range(min(ALIGN_DEPTH, len(parts) - 1) + 1)
    ]


def best_alignment(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """The (source prefix, target prefix) pair under which the most tensors match by name and shape;
    ``("", "")`` (keys as they are) wins ties."""
    by_rest: dict[str, list[str]] = {}
    for key in target:
        for prefix, rest in _prefixes(key):
            by_rest.setdefault(rest, []).append(prefix)
    score: Counter[tuple[str, str]] = Counter()
    for key, tensor in source.items():
        for source_prefix, rest in _prefixes(key):
            for target_prefix in by_rest.get(rest, ()):
                if target[target_prefix + rest].shape == tensor.shape:
                    score[(source_prefix, target_prefix)] += 1
    if not score:
        return "", ""
    best = max(score.values())
    if score.get(("", ""), 0) == best:
        return "", ""
    return min((pair for pair, n in score.items() if n == best), key=lambda pair: len(pair[0]) + len(pair[1]))


@dataclass
class LoadReport:
    source: str
    alignment: tuple[str, str]
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: file shape -> network shape"
    missing: list[str] = field(default_factory=list)  # network tensors the file does not have
    unexpected: list[str] = field(default_factory=list)  # file tensors the network does not have

    def log(self) -> None:
        src, dst = self.alignment
        if src or dst:
            log.info("%s: file tensors under %r loaded into the network's %r", self.source, src or "", dst or "")
        log.info(
            "%s: loaded %d tensors, skipped %d (shape differs), %d missing (left initialised), %d unused",
            self.source, len(self.loaded), len(self.skipped), len(self.missing), len(self.unexpected),
        )  # fmt: skip
        for title, keys in (
            ("loaded", self.loaded),
            ("skipped", self.skipped),
            ("missing", self.missing),
            ("unused", self.unexpected),
        ):
            if keys:
                log.info("%s %s: %s", self.source, title, ", ".join(keys))


def load_matching(
    module: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = False, source: str = "weights"
) -> LoadReport:
    """Copy the tensors of ``state`` into ``module`` by name (see the module docstring); returns and logs the report."""
    own = module.state_dict()
    target = {}
    for key in own:  # stripped name -> the module's own name (a compiled or wrapped network keeps its keys)
        target.setdefault(strip_wrappers(key), key)
    source_state = {}
    for key, tensor in state.items():
        source_state.setdefault(strip_wrappers(key), tensor)
    target_shapes = {name: own[key] for name, key in target.items()}
    src_prefix, dst_prefix = best_alignment(source_state, target_shapes)
    report = LoadReport(source, (src_prefix, dst_prefix))
    updates = {}
    for key, tensor in source_state.items():
        name = dst_prefix + key[len(src_prefix) :] if key.startswith(src_prefix) else None
        if name is None or name not in target:
            report.unexpected.append(key)
        elif own[target[name]].shape != tensor.shape:
            report.skipped.append(f"{name}: {tuple(tensor.shape)} -> {tuple(own[target[name]].shape)}")
        else:
            updates[target[name]] = tensor
            report.loaded.append(name)
    loaded = set(report.loaded)
    skipped = {entry.split(":")[0] for entry in report.skipped}
    report.missing = [name for name in target if name not in loaded and name not in skipped]
    report.log()
    if strict and (report.skipped or report.missing or report.unexpected):
        problems = report.skipped[:3] + report.missing[:3] + report.unexpected[:3]
        raise UserError(
            f"{source} does not match the network exactly ({len(report.skipped)} tensors of another shape, "
            f"{len(report.missing)} missing, {len(report.unexpected)} unused, e.g. {', '.join(problems)}); "
            "init_strict=false loads what matches and leaves the rest initialised."
        )
    if not report.loaded:
        raise UserError(f"none of the tensors in {source} fits the network: is it weights for this architecture?")
    with torch.no_grad():
        for key, tensor in updates.items():
            own[key].copy_(tensor.to(own[key].dtype))
    parameters = dict(module.named_parameters())
    for key in updates:
        if key in parameters:  # staged fine-tuning freezes these, not the tensors left freshly initialised
            parameters[key].loaded_weights = True
    return report


def load_file(module: nn.Module, path: str | Path, strict: bool = False) -> LoadReport:
    return load_matching(module, read_state_dict(path), strict=strict, source=str(path))


def torchvision_state_dict(model_name: str, weights: str, option: str) -> dict[str, torch.Tensor]:
    """torchvision's published weights ``weights`` (``IMAGENET1K_V1``, ``DEFAULT``, ...) of ``model_name``,
    downloaded into ``$TORCH_HOME/hub/checkpoints`` once; offline, one sentence saying how to pass the file."""
    from torchvision import models

    try:
        enum = models.get_model_weights(model_name)
        spec = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except (KeyError, ValueError) as err:
        try:
            names = ", ".join(["DEFAULT", *(w.name for w in models.get_model_weights(model_name))])
        except ValueError:
            names = "none"
        raise UserError(f"torchvision has no weights {weights!r} for {model_name}; choose one of: {names}.") from err
    try:
        return spec.get_state_dict(progress=False)
    except Exception as err:  # offline, proxy, broken cache: one sentence, not a urllib traceback
        raise UserError(
            f"could not download torchvision weights {model_name}.{spec.name} ({type(err).__name__}); offline, "
            f"download {spec.url} elsewhere and pass the file: {option}=/path/to/{spec.url.rsplit('/', 1)[-1]}."
        ) from err


def load_torchvision_weights(
    model_name: str, weights: str, model: nn.Module, option: str = "model.weights"
) -> LoadReport:
    """Load ``weights`` into ``model``: a torchvision weights name of ``model_name``, or a local file."""
    if is_file(weights):
        return load_file(model, weights)
    return load_matching(model, torchvision_state_dict(model_name, weights, option), source=f"{model_name}.{weights}")


def without_pretrained(config: Any) -> Any:
    """A (plain, nested) model config with every pretrained-weights option off: rebuilding a network whose
    weights then come from a checkpoint must not download or read other weights.

    A torchvision detector built with weights has frozen BatchNorm layers; rebuilt without, ordinary ones: the
    same computation in eval mode, and the checkpoint loads (BatchNorm fills in the ``num_batches_tracked``
    counters frozen BatchNorm does not save).
    """
    if isinstance(config, Mapping):
        out = {}
        for key, value in config.items():
            if key in PRETRAINED_KEYS and not isinstance(value, Mapping):
                out[key] = None
            elif key == "pretrained" and isinstance(value, bool):
                out[key] = False
            else:
                out[key] = without_pretrained(value)
        return out
    if isinstance(config, list):
        return [without_pretrained(v) for v in config]
    return config
