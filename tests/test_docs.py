"""The documentation cannot drift: every command line it shows still composes, and the site builds.

(a) Every ``python train.py|eval.py|predict.py|export.py ...`` command line in README.md and docs/**/*.md, in code
blocks and in inline code, is composed with Hydra's compose API against conf/ (no training, nothing instantiated).
Placeholders (``<your folder>``, ``...``) become a dummy value; a multirun's sweeps compose with their first value.
(b) ``mkdocs build --strict`` succeeds (the generated config reference and the API pages included).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SCRIPTS = {"train": "train", "eval": "eval", "predict": "predict", "export": "export"}
COMMAND = re.compile(
    r"(?:^|[\s;(])(?:python3?|torchrun(?:\s+--?[\w-]+(?:=\S+)?)*)\s+(train|eval|predict|export)\.py\b(.*)$"
)
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
FENCE = re.compile(r"^\s*(```|~~~)")
DUMMY = "/tmp/visiontrain-docs-dummy"


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    script: str  # train | eval | predict | export
    line: str  # the command line as shown

    def __str__(self) -> str:
        return f"{self.source}: python {self.script}.py{self.line}"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def commands_in(path: Path) -> list[Command]:
    """Command lines of one Markdown file: code-block lines (joined over ``\\`` continuations) and inline code.
    A command shown as a mistake on purpose, followed by its ``error: ...`` line, is left out."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    found: list[Command] = []
    in_block = False
    i = 0
    while i < len(lines):
        line, start = lines[i], i
        if FENCE.match(line):
            in_block = not in_block
            i += 1
            continue
        if in_block:
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            match = COMMAND.search(line.lstrip("$ "))
            if match and not following.startswith("error:"):
                found.append(Command(f"{rel}:{start + 1}", match.group(1), match.group(2)))
        else:
            for span in re.findall(r"`([^`]+)`", line):
                match = COMMAND.search(span)
                if match:
                    found.append(Command(f"{rel}:{start + 1}", match.group(1), match.group(2)))
        i += 1
    return found


def all_commands() -> list[Command]:
    return [command for path in documents() for command in commands_in(path)]


def arguments(command: Command) -> tuple[list[str], bool] | None:
    """(overrides, multirun) of a command line; None for one that names a config folder that exists only after a
    run (``--config-dir <sweep dir> --config-name best``)."""
    text = PLACEHOLDER.sub(DUMMY, command.line)
    tokens = shlex.split(text, comments=True)
    if "--config-dir" in tokens or "--config-name" in tokens or any(t.startswith("--config-") for t in tokens):
        return None
    multirun = any(t in ("-m", "--multirun") for t in tokens)
    overrides = []
    for token in tokens:
        if token in ("-m", "--multirun", "--help", "...", "\\"):
            continue
        if token.startswith("-"):
            raise AssertionError(f"{command}: unknown flag {token}")
        overrides.append(re.sub(r"=\.\.\.$", "=" + DUMMY, token))
    return overrides, multirun


def first_values(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep replaced by its first value (an interval by its start)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            out.append(override.input_line)
            continue
        key = override.get_key_element()
        if override.is_discrete_sweep():
            out.append(f"{key}={next(iter(override.sweep_string_iterator()))}")
        else:
            value = override.value()
            assert isinstance(value, IntervalSweep)
            out.append(f"{key}={value.start}")
    return out


def test_the_docs_show_commands():
    scripts = {c.script for c in all_commands()}
    assert scripts == set(SCRIPTS), f"expected commands of every entry point, found {sorted(scripts)}"
    readme = [c for c in all_commands() if c.source.startswith("README.md")]
    assert any("data=imagefolder" in c.line and "data.root=" in c.line for c in readme)


def test_the_docs_show_many_commands():
    assert len(all_commands()) > 50, f"only {len(all_commands())} command lines found in the docs"


@pytest.mark.parametrize("document", documents(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_command_line_composes(document):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    commands = commands_in(document)
    if not commands:
        pytest.skip("no command lines on this page")
    failures = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed: dict[tuple, str] = {}  # the same command line shown on several pages is composed once
            for command in commands:
                parsed = arguments(command)
                if parsed is None:
                    continue
                overrides, multirun = parsed
                key = (command.script, multirun, tuple(overrides))
                if key not in composed:
                    try:
                        if multirun:
                            overrides = first_values(overrides)
                        compose(config_name=SCRIPTS[command.script], overrides=overrides, return_hydra_config=True)
                        composed[key] = ""
                    except Exception as err:  # noqa: BLE001 - every reason is reported, one line per command
                        composed[key] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                if composed[key]:
                    failures.append(f"{command}\n    {composed[key]}")
    finally:
        GlobalHydra.instance().clear()
    assert not failures, f"{len(failures)} command line(s) in the docs no longer compose:\n" + "\n".join(failures)


def test_the_site_builds(tmp_path):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if not module_available(m)]
    if missing:
        pytest.skip(f"mkdocs build needs {', '.join(missing)} (pip install -e '.[dev]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    config_page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    for option in ("data=imagefolder", "model=fasterrcnn", "trainer=ddp_cpu"):
        assert option in config_page, f"the generated config reference lacks {option}"


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
