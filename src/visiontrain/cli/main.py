"""``visiontrain <command> [Hydra overrides]``: one command with the four scripts and the tools as subcommands, in
the manner of ``yolo train|val|predict|export`` and LightningCLI's ``fit|validate|test|predict``. Each subcommand
takes exactly what its script takes (``visiontrain train model=resnet`` is ``python train.py model=resnet``);
``python train.py`` stays the headline, and the scripts stay as they are.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

# subcommand -> (module with a main(), what it does); imported only when chosen, so a mistyped one answers at once
COMMANDS = {
    "train": ("visiontrain.cli.train", "train (and test) a model: train model=resnet data=cifar10"),
    "eval": ("visiontrain.cli.eval", "test a checkpoint: eval ckpt_path=<run>/checkpoints/last.ckpt"),
    "predict": ("visiontrain.cli.predict", "run a model on image files: predict ckpt_path=<ckpt> input=<folder>"),
    "export": ("visiontrain.cli.export", "export a checkpoint to ONNX or TorchScript: export ckpt_path=<ckpt>"),
    "browse": (
        "visiontrain.cli.train",
        "look at the data, no training (train ... debug=browse): browse data=voc_seg",
    ),
    "check": ("visiontrain.cli.check", "is this environment ready? versions, CPU/GPU features, torchvision, DATA_DIR"),
    "sweep-report": ("visiontrain.sweeps.report", "an Optuna study's report from its storage: sweep-report URL STUDY"),
    "label-issues": (
        "visiontrain.sweeps.label_issues",
        "likely label errors from a k-fold sweep's out-of-fold predictions: label-issues <sweep dir>",
    ),
}


def config_groups() -> list[str]:
    from visiontrain.runs.config import CONFIG_DIR

    return sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and not p.name.startswith("_"))


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: visiontrain <command> [overrides ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", f"config groups (group=option): {', '.join(config_groups())}"]
    lines += ["each command's own --help lists its options, e.g. visiontrain train --help; shell completion:",
              "eval \"$(visiontrain -sc install=bash)\" (Hydra's, for every command)"]  # fmt: skip
    return "\n".join(lines)


COMPLETION_FLAGS = ("-sc", "--shell-completion")


def completion_command() -> str:
    """Hydra's shell completion for ``visiontrain <command> ...``. Its script calls ``visiontrain -sc query=...``
    with the whole line in COMP_LINE; Hydra completes the line of one app, so the command word is taken out of it
    (and out of COMP_POINT) and that command answers. ``visiontrain [command] -sc install=bash`` installs it."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split(" ")
    command = "train"
    if len(words) > 2 and words[1] in COMMANDS:
        command = words[1]
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
        point = int(os.environ.get("COMP_POINT", len(line)))
        os.environ["COMP_POINT"] = str(max(0, point - len(words[1]) - 1))
    return command


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and (args[0] in COMPLETION_FLAGS or (len(args) > 1 and args[1] in COMPLETION_FLAGS)):
        command = completion_command()
        sys.argv = ["visiontrain", *(args if args[0] in COMPLETION_FLAGS else args[1:])]  # as the script names it
        raise SystemExit(importlib.import_module(COMMANDS[command][0]).main() or 0)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        raise SystemExit(f"error: visiontrain has no command {command!r}; it has {', '.join(COMMANDS)}.")
    if command == "browse":
        rest = [*rest, "debug=browse"]
    sys.argv = [f"visiontrain {command}", *rest]  # what each command's main reads, as its script would
    raise SystemExit(importlib.import_module(COMMANDS[command][0]).main() or 0)


if __name__ == "__main__":
    main()
